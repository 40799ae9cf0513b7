/**
 * The gateway's calls to the services: Connect (binary) over fetch to each service process,
 * plus the raw pass-through of Connect and gRPC-Web requests. What travels with every call is
 * decided here once: the caller's credential (the service checks it again), the request
 * id, the trace context, the user agent and the client's address in x-forwarded-for (which the
 * services believe only from JOBMESH_TRUSTED_PROXIES, i.e. from this gateway).
 */
import type { DescMethod, DescMethodStreaming, DescMethodUnary, DescService, Message } from "@bufbuild/protobuf";
import { Code, ConnectError, type Transport } from "@connectrpc/connect";
import { createFetchClient } from "@connectrpc/connect/protocol";
import { createTransport } from "@connectrpc/connect/protocol-connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { trace } from "@opentelemetry/api";
import { serviceNames } from "../contract/index.ts";
import { BodyTooLargeError } from "./http-errors.ts";

export type BackendName = "jobs" | "pipelines" | "auth" | "audit" | "webhooks";

/** What one backend call carries besides its message. */
export interface BackendCall {
  /** From forwardedHeaders(). */
  headers: Headers;
  signal: AbortSignal;
  /** The call's deadline; undefined for none (a long watch). */
  timeoutMs: number | undefined;
}

export interface Backends {
  /** The base URL serving `service`, or undefined when this mesh does not serve it. */
  urlOf(service: DescService): string | undefined;
  unary(method: DescMethod, input: Message, call: BackendCall): Promise<Message>;
  /** A server-streaming call (one input) or a client-streaming one (many inputs, one output message in the stream). */
  stream(method: DescMethod, inputs: AsyncIterable<Message>, call: BackendCall): Promise<AsyncIterable<Message>>;
  /** Forwards a Connect or gRPC-Web request as it is, body streamed both ways; a body over `maxBodyBytes` is refused with 413. */
  passthrough(req: Request, service: DescService, call: BackendCall, maxBodyBytes: number): Promise<Response>;
}

export interface BackendDeps {
  urls: Record<BackendName, string>;
  /** fetch bound to the gateway's HTTP client (keep-alive pool, source address). */
  fetch: typeof fetch;
  /** Largest message read from or written to a service. */
  maxMessageBytes: number;
}

/** Headers a request carries on to the services; everything else stays at the edge. */
const carriedHeaders = ["authorization", "x-api-key", "traceparent", "tracestate", "user-agent"];
const traceContextHeaders = new Set(["traceparent", "tracestate"]);

/**
 * Whether the gateway traces this request itself: Deno's OpenTelemetry (OTEL_DENO=true) opens a
 * server span per request, registers with @opentelemetry/api, and its fetch then writes the
 * traceparent of the gateway's own client span on every call. The client's, carried as well,
 * would be sent beside it ("a, b"), which no service parses: each service would start a trace of its own.
 * Without it (no span active) the client's trace context is carried as it is.
 */
function fetchWritesTraceContext(): boolean {
  return trace.getActiveSpan() !== undefined;
}

/** The headers every backend call sends: the carried ones, the request id and the client address. */
export function forwardedHeaders(req: Request, requestId: string, clientAddress: string | undefined): Headers {
  const headers = new Headers();
  const skipTraceContext = fetchWritesTraceContext();
  for (const name of carriedHeaders) {
    if (skipTraceContext && traceContextHeaders.has(name)) continue;
    const value = req.headers.get(name);
    if (value !== null) headers.set(name, value);
  }
  headers.set("x-request-id", requestId);
  // One hop, resolved here: what a client wrote into x-forwarded-for was already weighed against
  // the gateway's own trusted proxies, and is not passed on for a service to misread.
  if (clientAddress) headers.set("x-forwarded-for", clientAddress);
  return headers;
}

/** Pass-through requests drop these: hop-by-hop, or set by this hop. */
const droppedOnPassthrough = new Set(["host", "connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection", "te", "x-forwarded-for", "x-request-id", "content-length"]);

export function createBackends(deps: BackendDeps): Backends {
  const transports = new Map<string, { calls: Transport; uploads: Transport }>();
  // Deno's fetch asks for gzip by itself and inflates the body, but leaves Content-Encoding and
  // the compressed Content-Length on the response: Connect then refuses the encoding, and a
  // pass-through client would inflate twice. The services are one hop away; ask for none.
  const fetchIdentity: typeof fetch = (input, init) => {
    // The transports hand over a Headers of their own for each call: set it there rather than
    // copy it (a Headers conversion is the dearest step of a call in Deno).
    if (!(input instanceof Request) && init?.headers instanceof Headers) {
      init.headers.set("accept-encoding", "identity");
      return deps.fetch(input, init);
    }
    const headers = new Headers(init?.headers ?? (input instanceof Request ? input.headers : undefined));
    headers.set("accept-encoding", "identity");
    return input instanceof Request ? deps.fetch(new Request(input, { headers })) : deps.fetch(input, { ...init, headers });
  };
  const httpClient = createFetchClient(fetchIdentity);

  function baseUrlOf(service: DescService): string {
    const name = serviceNames[service.typeName];
    const url = name ? deps.urls[name] : "";
    if (!url) throw new ConnectError(`${service.typeName} is not served by this mesh`, Code.Unimplemented);
    return url;
  }

  /**
   * connect-web's transport for unary and server-streaming calls: it sends a unary body as bytes,
   * where the universal transport turns every body into a stream of chunks (measured: about half
   * of the gateway's CPU per call, and 0.4 ms of p50). It cannot send a request stream, so uploads
   * (client streaming) take the universal one.
   */
  function transportOf(service: DescService): { calls: Transport; uploads: Transport } {
    const baseUrl = baseUrlOf(service);
    let transport = transports.get(baseUrl);
    if (!transport) {
      const calls = createConnectTransport({ baseUrl, useBinaryFormat: true, fetch: fetchIdentity });
      const uploads = createTransport({
        httpClient,
        baseUrl,
        useBinaryFormat: true,
        interceptors: [],
        acceptCompression: [],
        sendCompression: null,
        compressMinBytes: Number.MAX_SAFE_INTEGER,
        readMaxBytes: deps.maxMessageBytes,
        writeMaxBytes: deps.maxMessageBytes,
      });
      transport = { calls, uploads };
      transports.set(baseUrl, transport);
    }
    return transport;
  }

  return {
    urlOf(service) {
      const name = serviceNames[service.typeName];
      return (name && deps.urls[name]) || undefined;
    },
    async unary(method, input, call) {
      if (method.methodKind !== "unary") throw new ConnectError(`${method.name} is not unary`, Code.Internal);
      try {
        const response = await transportOf(method.parent).calls.unary(method as DescMethodUnary, call.signal, call.timeoutMs, call.headers, input, undefined);
        return response.message;
      } catch (error) {
        throw unreachableAsUnavailable(error, method.parent);
      }
    },
    async stream(method, inputs, call) {
      if (method.methodKind === "unary") throw new ConnectError(`${method.name} is not streaming`, Code.Internal);
      const { calls, uploads } = transportOf(method.parent);
      try {
        const response = await (method.methodKind === "server_streaming" ? calls : uploads).stream(method as DescMethodStreaming, call.signal, call.timeoutMs, call.headers, inputs, undefined);
        return response.message;
      } catch (error) {
        throw unreachableAsUnavailable(error, method.parent);
      }
    },
    async passthrough(req, service, call, maxBodyBytes) {
      if (Number(req.headers.get("content-length") ?? "0") > maxBodyBytes) throw new BodyTooLargeError(maxBodyBytes, "request body");
      // Counted as it flows: a body without Content-Length (a client stream) is cut at the limit.
      let tooLarge: BodyTooLargeError | undefined;
      let size = 0;
      const body = req.body?.pipeThrough(
        new TransformStream<Uint8Array, Uint8Array>({
          transform(chunk, controller) {
            size += chunk.byteLength;
            if (size > maxBodyBytes) controller.error((tooLarge = new BodyTooLargeError(maxBodyBytes, "request body")));
            else controller.enqueue(chunk);
          },
        }),
      );
      const url = new URL(req.url);
      const headers = new Headers();
      const skipTraceContext = fetchWritesTraceContext();
      req.headers.forEach((value, name) => {
        if (!droppedOnPassthrough.has(name) && !(skipTraceContext && traceContextHeaders.has(name))) headers.set(name, value);
      });
      call.headers.forEach((value, name) => headers.set(name, value));
      const upstream = await fetchIdentity(baseUrlOf(service) + url.pathname + url.search, {
        method: req.method,
        headers,
        body,
        signal: call.signal,
        // A streamed request body (Connect client streaming) needs half duplex.
        ...(body ? { duplex: "half" } : {}),
      } as RequestInit).catch((error: unknown) => Promise.reject(tooLarge ?? unreachableAsUnavailable(error, service)));
      const answer = new Headers(upstream.headers);
      for (const name of ["connection", "keep-alive", "transfer-encoding"]) answer.delete(name);
      return new Response(upstream.body, { status: upstream.status, statusText: upstream.statusText, headers: answer });
    },
  };
}

/**
 * A service that cannot be reached (connection refused, reset, DNS) is UNAVAILABLE (503: try again),
 * not the UNKNOWN "fetch failed" the transports report; other errors pass as they are.
 */
function unreachableAsUnavailable(error: unknown, service: DescService): unknown {
  const networkFailure = error instanceof TypeError || (error instanceof ConnectError && error.code === Code.Unknown && error.cause instanceof TypeError);
  if (!networkFailure) return error;
  return new ConnectError(`${service.typeName} is unavailable; try again`, Code.Unavailable, undefined, undefined, error);
}

/**
 * The deadline a request asks for in its `grpc-timeout` header ("5S", "250m", "1H"; units
 * H M S m u n as gRPC defines them), capped at `maxMs`; `fallback` when it names none.
 * A malformed value is refused rather than ignored: a client that set one expects it kept.
 */
export function deadlineOf(headers: Headers, fallback: number | undefined, maxMs: number): number | undefined {
  const raw = headers.get("grpc-timeout");
  if (raw === null) return fallback;
  const match = /^(\d{1,8})([HMSmun])$/.exec(raw.trim());
  if (!match) throw new ConnectError(`header grpc-timeout must be digits and a unit (H, M, S, m, u, n), e.g. "5S", got "${raw}"`, Code.InvalidArgument);
  const perUnitMs: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1_000, m: 1, u: 0.001, n: 0.000001 };
  return Math.min(maxMs, Math.max(1, Math.ceil(Number(match[1]) * perUnitMs[match[2]!]!)));
}

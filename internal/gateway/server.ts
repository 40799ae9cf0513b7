/**
 * The gateway's request handler: a web-standard `(Request) => Response` that Deno.serve runs.
 * Every request goes the same way, in this order, and each step lives in its own module:
 *
 *   request id → CORS preflight → operator endpoints (/healthz, /readyz, /metrics, /openapi.json,
 *   /docs) → route (REST from the http rules, or Connect/gRPC-Web pass-through) → authenticate →
 *   authorize (the method's permission, before any backend is called) → rate limit → translate
 *   (JSON, query, path; upload stream) → call the service → translate back (JSON, SSE/NDJSON,
 *   download) → security headers, CORS, RateLimit headers, access log.
 *
 * The services decide again on their own (gRPC clients reach them without the gateway); the edge
 * refuses early so a refused call costs the mesh nothing.
 */
import type { DescMethod, DescService, Message } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { accessRulesOf, httpBindingsOfServices, meshServices, procedureOf, type AccessRule } from "../contract/index.ts";
import { forwardedHeaders, deadlineOf, type BackendCall, type Backends } from "./backend.ts";
import { createDocs, type DocsDeps } from "./docs.ts";
import { downloadResponse, isDownloadMethod } from "./download.ts";
import { authorizeAtEdge, type EdgeAuth, type EdgeCaller } from "./edge-auth.ts";
import { BodyTooLargeError, errorResponse, httpStatusOf, statusBodyOf, toGatewayError } from "./http-errors.ts";
import { applySecurityHeaders, createCorsPolicy } from "./http-policy.ts";
import { logRequest, type GatewayLog, type GatewayMetrics } from "./observability.ts";
import { buildOpenApiDocument } from "./openapi.ts";
import { rateLimitHeaders, type EdgeRateLimiter } from "./rate-limit.ts";
import { createRouteTable } from "./routes.ts";
import { applyResume, serverStreamResponse } from "./server-stream.ts";
import { messageToJson, parseJsonBody, requestFromHttp, responseToJson } from "./transcode.ts";
import { isUploadMethod, uploadMessages, type UploadMessages } from "./upload.ts";

export interface GatewayDeps {
  backends: Backends;
  auth: EdgeAuth;
  rateLimiter: EdgeRateLimiter;
  log: GatewayLog;
  metrics: GatewayMetrics;
  docs: DocsDeps;
  /** The client's address from the socket peer and x-forwarded-for (as far as trusted proxies vouch). */
  clientAddressOf(peer: string | undefined, forwardedFor: string | null): string | undefined;
  /** Answers true when every backend answers its health check (for /readyz). */
  backendsReady(): Promise<Record<string, boolean>>;
  settings: {
    corsOrigins: readonly string[];
    maxBodyBytes: number;
    maxUploadBytes: number;
    defaultTimeoutMs: number;
    maxTimeoutMs: number;
    sseHeartbeatMs: number;
    version: string;
  };
}

export interface Gateway {
  handle(req: Request, peer: string | undefined): Promise<Response>;
  /** Requests being answered now (drain waits for 0). */
  inFlight(): number;
}

/** Connect and gRPC-Web requests name the procedure in the path: /jobmesh.v1.JobService/GetJob. */
const procedurePath = /^\/([a-z0-9_.]+\.[A-Za-z0-9_]+)\/([A-Za-z0-9_]+)$/;

export function createGateway(deps: GatewayDeps): Gateway {
  const { settings, log } = deps;
  // Both built once, from the descriptors: a method without an authz or http rule stops start-up.
  const rules = accessRulesOf(meshServices);
  const routes = createRouteTable(httpBindingsOfServices(meshServices));
  const methodsByProcedure = new Map<string, DescMethod>(meshServices.flatMap((s) => s.methods.map((m) => [procedureOf(m), m] as const)));
  const openApi = JSON.stringify(buildOpenApiDocument(httpBindingsOfServices(meshServices), { version: settings.version }));
  const cors = createCorsPolicy(settings.corsOrigins);
  const docs = createDocs(deps.docs);
  let inFlight = 0;

  /** Authenticates, authorizes and rate-limits one call; returns the caller and the headers the answer carries. */
  async function admit(rule: AccessRule, req: Request, clientAddress: string | undefined): Promise<{ caller: EdgeCaller | undefined; limitHeaders: Headers }> {
    const caller = rule.kind === "public" ? undefined : await deps.auth.authenticate(req.headers);
    authorizeAtEdge(rule, caller);
    const outcome = await deps.rateLimiter.consume(caller ? { tenantId: caller.tenantId, credentialKey: caller.credentialKey } : { clientAddress });
    const limitHeaders = rateLimitHeaders(outcome);
    if (!outcome.allowed) {
      throw Object.assign(new ConnectError(`rate limit exceeded (${outcome.policy}); retry after ${outcome.retryAfterSeconds ?? 1} s`, Code.ResourceExhausted), { limitHeaders });
    }
    return { caller, limitHeaders };
  }

  async function serveOperator(req: Request, pathname: string): Promise<Response | undefined> {
    if (req.method !== "GET" && req.method !== "HEAD") return undefined;
    switch (pathname) {
      case "/healthz":
        return Response.json({ status: "ok" });
      case "/readyz": {
        const backends = await deps.backendsReady();
        const ready = Object.values(backends).every(Boolean);
        return Response.json({ ready, backends }, { status: ready ? 200 : 503 });
      }
      case "/metrics":
        return deps.metrics.render();
      case "/openapi.json":
        return new Response(openApi, { headers: { "content-type": "application/json" } });
      default:
        return docs.handle(req, pathname);
    }
  }

  async function callRest(req: Request, method: DescMethod, input: Message | AsyncIterable<Message>, call: BackendCall, abort: AbortController, binding: Parameters<typeof responseToJson>[0]): Promise<Response> {
    if (method.methodKind === "unary") {
      const output = await deps.backends.unary(method, input as Message, call);
      return Response.json(responseToJson(binding, output));
    }
    if (method.methodKind === "client_streaming") {
      // An upload that fails while it streams (413 by counting, a malformed form) reaches us from
      // fetch only as "fetch failed": the upload stream keeps the real reason.
      const output = await deps.backends
        .stream(method, input as AsyncIterable<Message>, call)
        .then((outputs) => collect(outputs, 1))
        .then(([first]) => first, (error: unknown) => Promise.reject((input as Partial<UploadMessages>).failure ?? error));
      if (!output) throw new ConnectError(`${method.name} answered no message`, Code.Internal);
      return Response.json(responseToJson(binding, output));
    }
    const messages = await deps.backends.stream(method, single(input as Message), call);
    if (isDownloadMethod(method)) return downloadResponse(messages, abort);
    // A stream refused at once (NOT_FOUND, PERMISSION_DENIED) gets its own status rather than a
    // 200 with an error event; a stream that is merely quiet is not held back for long.
    const opened = await openedWithin(messages, firstMessageWaitMs);
    return serverStreamResponse({
      req,
      method,
      messages: opened,
      heartbeatMs: settings.sseHeartbeatMs,
      abort,
      toJson: messageToJson,
      statusOf: (error) => {
        const failure = toGatewayError(error);
        return { status: httpStatusOf(failure), body: statusBodyOf(failure) };
      },
    });
  }

  async function handle(req: Request, peer: string | undefined): Promise<Response> {
    const started = performance.now();
    const url = new URL(req.url);
    const requestId = requestIdOf(req.headers);
    const clientAddress = deps.clientAddressOf(peer, req.headers.get("x-forwarded-for"));
    let route = "not_found";
    let tenant: string | undefined;
    let extraHeaders = new Headers();
    let response: Response;
    // Aborted when the client goes away (Deno aborts req.signal) or the answer is done streaming.
    const abort = new AbortController();
    req.signal.addEventListener("abort", () => abort.abort(req.signal.reason), { once: true });
    try {
      const preflight = cors.preflight(req);
      if (preflight) {
        route = "preflight";
        response = preflight;
      } else if ((response = (await serveOperator(req, url.pathname))!)) {
        route = url.pathname.startsWith("/docs") ? "/docs" : url.pathname;
      } else {
        const passthrough = procedurePath.exec(url.pathname);
        const method = passthrough ? methodsByProcedure.get(url.pathname) : undefined;
        if (passthrough && method) {
          // The procedure names the route: one of the mesh's methods, so the metric stays bounded.
          route = url.pathname;
          const admitted = await admit(rules.get(url.pathname)!, req, clientAddress);
          tenant = admitted.caller?.tenantId;
          extraHeaders = admitted.limitHeaders;
          const call: BackendCall = { headers: forwardedHeaders(req, requestId, clientAddress), signal: abort.signal, timeoutMs: undefined };
          response = await deps.backends.passthrough(req, method.parent as DescService, call);
        } else {
          const match = routes.match(req.method, url.pathname);
          if (match.kind === "not_found") {
            throw new ConnectError(`no route for ${req.method} ${url.pathname}; see /openapi.json`, Code.NotFound);
          }
          if (match.kind === "method_not_allowed") {
            route = "method_not_allowed";
            extraHeaders.set("allow", match.allow.join(", "));
            throw Object.assign(new ConnectError(`${req.method} is not allowed on ${url.pathname}; allowed: ${match.allow.join(", ")}`, Code.Unimplemented), { httpStatus: 405 });
          }
          const { binding } = match;
          const method = binding.method;
          route = binding.path;
          const admitted = await admit(rules.get(procedureOf(method))!, req, clientAddress);
          tenant = admitted.caller?.tenantId;
          extraHeaders = admitted.limitHeaders;
          const input = isUploadMethod(method)
            ? uploadMessages(req, method, settings.maxUploadBytes)
            : requestFromHttp(binding, match.variables, url.searchParams, parseJsonBody(await readBody(req, settings.maxBodyBytes)));
          if (!isUploadMethod(method) && method.methodKind === "server_streaming") applyResume(req, method, input as Message);
          const timeoutMs = deadlineOf(req.headers, method.methodKind === "unary" ? settings.defaultTimeoutMs : undefined, settings.maxTimeoutMs);
          const call: BackendCall = { headers: forwardedHeaders(req, requestId, clientAddress), signal: abort.signal, timeoutMs };
          response = await callRest(req, method, input, call, abort, binding);
        }
      }
    } catch (error) {
      const failure = toGatewayError(error);
      const limitHeaders = (error as { limitHeaders?: Headers }).limitHeaders;
      if (limitHeaders) limitHeaders.forEach((v, k) => extraHeaders.set(k, v));
      const status = (error as { httpStatus?: number }).httpStatus;
      response = errorResponse(failure);
      if (status) response = new Response(response.body, { status, headers: response.headers });
      if (failure.code === Code.Internal) log.error("request failed", { requestId, route, err: String((error as Error)?.stack ?? error) });
    }
    const headers = new Headers(response.headers);
    extraHeaders.forEach((v, k) => headers.set(k, v));
    headers.set("x-request-id", requestId);
    applySecurityHeaders(headers, route === "/docs" ? { contentSecurityPolicy: response.headers.get("content-security-policy") ?? undefined } : undefined);
    cors.apply(req, headers);
    const answer = new Response(req.method === "HEAD" ? null : response.body, { status: response.status, statusText: response.statusText, headers });
    const record = { method: req.method, route, status: answer.status, durationMs: performance.now() - started, requestId, tenant };
    logRequest(log, record);
    deps.metrics.record(record);
    return answer;
  }

  return {
    async handle(req, peer) {
      inFlight++;
      try {
        return await handle(req, peer);
      } finally {
        inFlight--;
      }
    },
    inFlight: () => inFlight,
  };
}

/** The client's x-request-id when it is a sane token, else a new one (never echo arbitrary bytes into logs). */
function requestIdOf(headers: Headers): string {
  const given = headers.get("x-request-id");
  return given && /^[A-Za-z0-9._:-]{1,128}$/.test(given) ? given : crypto.randomUUID();
}

/** The request body as text, refused with 413 past `maxBytes` (by Content-Length up front, or counted as it arrives). */
async function readBody(req: Request, maxBytes: number): Promise<string> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > maxBytes) throw new BodyTooLargeError(maxBytes, "request body");
  if (!req.body) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body.getReader();
  for (let read = await reader.read(); !read.done; read = await reader.read()) {
    size += read.value.byteLength;
    if (size > maxBytes) {
      await reader.cancel();
      throw new BodyTooLargeError(maxBytes, "request body");
    }
    chunks.push(read.value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ConnectError("request body is not valid UTF-8", Code.InvalidArgument);
  }
}

/** How long a server stream may take to send its first message before the answer starts anyway. */
const firstMessageWaitMs = 250;

/**
 * Waits up to `ms` for the stream's first message: an error in that time is thrown (so the caller
 * answers with its status); a message or a quiet stream is handed on whole.
 */
async function openedWithin<T>(messages: AsyncIterable<T>, ms: number): Promise<AsyncIterable<T>> {
  const iterator = messages[Symbol.asyncIterator]();
  const first = iterator.next();
  // Awaited below, or never if the client leaves first: either way not an unhandled rejection.
  first.catch(() => {});
  let timer: ReturnType<typeof setTimeout> | undefined;
  const quiet = new Promise<"quiet">((resolve) => (timer = setTimeout(() => resolve("quiet"), ms)));
  try {
    await Promise.race([first, quiet]);
  } finally {
    clearTimeout(timer);
  }
  return {
    async *[Symbol.asyncIterator]() {
      try {
        for (let next = await first; !next.done; next = await iterator.next()) yield next.value;
      } finally {
        await iterator.return?.();
      }
    },
  };
}

async function* single<T>(value: T): AsyncIterable<T> {
  yield value;
}

async function collect<T>(iterable: AsyncIterable<T>, atMost: number): Promise<T[]> {
  const out: T[] = [];
  for await (const item of iterable) {
    out.push(item);
    if (out.length >= atMost) break;
  }
  return out;
}

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
import { isEdgeRefusal, type EdgeRefusal } from "./edge-audit.ts";
import { downloadResponse, isDownloadMethod } from "./download.ts";
import { authorizeAtEdge, type EdgeAuth, type EdgeCaller } from "./edge-auth.ts";
import { BodyTooLargeError, errorResponse, httpStatusOf, statusBodyOf, toGatewayError } from "./http-errors.ts";
import { applySecurityHeaders, createCorsPolicy } from "./http-policy.ts";
import { checkedUnaryBody, isConnectUnaryBinary, protocolErrorResponse } from "./passthrough-errors.ts";
import { logRequest, type GatewayLog, type GatewayMetrics } from "./observability.ts";
import { buildOpenApiDocument } from "./openapi.ts";
import { rateLimitHeaders, type EdgeRateLimiter, type RateLimitOutcome } from "./rate-limit.ts";
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
  /**
   * Records a call refused at the edge (401, 403, 429 before any backend is called): that call's
   * one audit event, since no service sees it. Absent when audit is off. Must not throw or block.
   */
  recordRefusal?(refusal: EdgeRefusal): void;
  settings: {
    corsOrigins: readonly string[];
    maxBodyBytes: number;
    maxUploadBytes: number;
    defaultTimeoutMs: number;
    maxTimeoutMs: number;
    sseHeartbeatMs: number;
    /** Streams (SSE, NDJSON, downloads, uploads) one caller may hold open at once; the next gets 429. */
    maxStreamsPerCaller: number;
    version: string;
  };
}

export interface Gateway {
  /**
   * Answers one request. `completed` (Deno.serve's `info.completed`) settles once the answer is
   * over, sent or cut off: it frees the caller's stream slot and ends the backend call. A client
   * that leaves before the answer starts is seen through `req.signal` (Deno runs with
   * --unstable-no-legacy-abort, so that signal means the client went away, nothing else).
   */
  handle(req: Request, peer: string | undefined, completed: Promise<void>): Promise<Response>;
  /** Streams open now. */
  openStreams(): number;
  /** Ends every open stream (its backend call is cancelled), so that a drain is not held open by watchers; they reconnect elsewhere. */
  closeStreams(): void;
}

/** The HTTP methods metrics name; any other token a client sends is counted as OTHER, so series stay bounded. */
const knownMethods = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);
/** How long a /readyz answer is reused: each one asks every backend, and it is open to anyone. */
const readinessReuseMs = 1_000;

/** A call to one of the mesh's methods, as far as the edge got with it (for recording a refusal). */
interface EdgeAttempt {
  /** The method's full name: "jobmesh.v1.JobService.GetJob". */
  action: string;
  /** Set once the credential verified. */
  caller: EdgeCaller | undefined;
  /** Set once a backend is called: from then on the service records the call, not the edge. */
  forwarded: boolean;
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
  // Every open stream's controller (to end them on drain), and how many each caller holds.
  const streams = new Set<AbortController>();
  const streamsByCaller = new Map<string, number>();
  let readiness: { at: number; answer: Promise<Record<string, boolean>> } | undefined;
  const refusalBlocks = createRefusalBlocks();

  /**
   * Takes one of the caller's stream slots until `completed` settles; refuses with 429 when the
   * caller holds its limit already (a stream costs a backend call for as long as it is open).
   */
  function holdStream(caller: string, abort: AbortController, completed: Promise<void>): void {
    const held = streamsByCaller.get(caller) ?? 0;
    if (held >= settings.maxStreamsPerCaller) {
      throw new ConnectError(`too many open streams: at most ${settings.maxStreamsPerCaller} per caller (JOBMESH_GATEWAY_MAX_STREAMS_PER_CALLER); close one first`, Code.ResourceExhausted);
    }
    streamsByCaller.set(caller, held + 1);
    streams.add(abort);
    const release = () => {
      streams.delete(abort);
      const left = (streamsByCaller.get(caller) ?? 1) - 1;
      if (left > 0) streamsByCaller.set(caller, left);
      else streamsByCaller.delete(caller);
    };
    completed.then(release, release);
  }

  /** Authenticates, authorizes and rate-limits one call; returns the caller and the headers the answer carries. */
  async function admit(rule: AccessRule, req: Request, clientAddress: string | undefined, attempt: EdgeAttempt): Promise<{ caller: EdgeCaller | undefined; limitHeaders: Headers }> {
    let caller: EdgeCaller | undefined;
    // An address past its budget of refused credentials is refused before its next credential is
    // looked at: each guessed API key would otherwise still cost AuthService a lookup.
    const blockedFor = refusalBlocks.secondsLeft(clientAddress);
    if (blockedFor > 0 && rule.kind !== "public") {
      const limitHeaders = new Headers({ "retry-after": String(blockedFor) });
      throw Object.assign(new ConnectError(`too many refused credentials from this address; retry after ${blockedFor} s`, Code.ResourceExhausted), { limitHeaders });
    }
    try {
      caller = rule.kind === "public" ? undefined : await deps.auth.authenticate(req.headers);
      attempt.caller = caller;
      authorizeAtEdge(rule, caller);
    } catch (refusal) {
      // A refused credential counts against the client's address like an anonymous call: guessing
      // keys or forging tokens is limited, and each guess would otherwise cost AuthService a lookup.
      const code = refusal instanceof ConnectError ? refusal.code : undefined;
      if (code === Code.Unauthenticated || code === Code.PermissionDenied) {
        const outcome = await deps.rateLimiter.consume({ clientAddress });
        if (!outcome.allowed) refusalBlocks.block(clientAddress, outcome.retryAfterSeconds ?? 1);
        throwIfLimited(outcome);
      }
      throw refusal;
    }
    const outcome = await deps.rateLimiter.consume(caller ? { tenantId: caller.tenantId, credentialKey: caller.credentialKey } : { clientAddress });
    throwIfLimited(outcome);
    return { caller, limitHeaders: rateLimitHeaders(outcome) };
  }

  async function serveOperator(req: Request, pathname: string): Promise<Response | undefined> {
    // The docs answer every method on their paths (405 for writes); the rest are read-only.
    if (req.method !== "GET" && req.method !== "HEAD") return pathname === "/docs" || pathname.startsWith("/docs/") ? docs.handle(req, pathname) : undefined;
    switch (pathname) {
      case "/healthz":
        return Response.json({ status: "ok" });
      case "/readyz": {
        if (!readiness || performance.now() - readiness.at > readinessReuseMs) readiness = { at: performance.now(), answer: deps.backendsReady() };
        const backends = await readiness.answer;
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

  async function handle(req: Request, peer: string | undefined, completed: Promise<void>): Promise<Response> {
    const started = performance.now();
    const url = new URL(req.url);
    const requestId = requestIdOf(req.headers);
    const clientAddress = deps.clientAddressOf(peer, req.headers.get("x-forwarded-for"));
    let route = "not_found";
    let tenant: string | undefined;
    let extraHeaders = new Headers();
    let response: Response;
    // A Connect or gRPC-Web call is refused in its own protocol, for the client generated from our protos.
    let speaksProtocol = false;
    let attempt: EdgeAttempt | undefined;
    // Ends the backend call once the answer is sent or the client went away.
    const abort = new AbortController();
    completed.then(() => abort.abort(), (reason: unknown) => abort.abort(reason));
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
          if (req.method !== "POST") {
            extraHeaders.set("allow", "POST");
            throw Object.assign(new ConnectError(`${req.method} is not allowed on ${url.pathname}: Connect and gRPC-Web calls are POSTs`, Code.Unimplemented), { httpStatus: 405 });
          }
          speaksProtocol = true;
          attempt = { action: actionOf(method), caller: undefined, forwarded: false };
          const admitted = await admit(rules.get(url.pathname)!, req, clientAddress, attempt);
          tenant = admitted.caller?.tenantId;
          extraHeaders = admitted.limitHeaders;
          if (method.methodKind !== "unary") holdStream(admitted.caller?.credentialKey ?? `address:${clientAddress}`, abort, completed);
          // The Connect client's own deadline travels in its headers; this one only bounds what the
          // edge holds for a unary call or an upload (a watch is bounded by its stream slot and by
          // drain). One timer, cleared when the answer is over.
          if (method.methodKind !== "server_streaming") {
            const bound = setTimeout(() => abort.abort(new ConnectError("the call took longer than the gateway allows", Code.DeadlineExceeded)), settings.maxTimeoutMs);
            const clear = () => clearTimeout(bound);
            completed.then(clear, clear);
          }
          const call: BackendCall = { headers: forwardedHeaders(req, requestId, clientAddress), signal: abort.signal, timeoutMs: undefined };
          const limit = method.methodKind === "client_streaming" ? settings.maxUploadBytes + passthroughFramingBytes : settings.maxBodyBytes;
          const forwarded = isConnectUnaryBinary(req, method)
            ? new Request(req.url, { method: "POST", headers: req.headers, body: checkedUnaryBody(method, await readBodyBytes(req, limit)) })
            : req;
          attempt.forwarded = true;
          response = await deps.backends.passthrough(forwarded, method.parent as DescService, call, limit);
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
          attempt = { action: actionOf(method), caller: undefined, forwarded: false };
          const admitted = await admit(rules.get(procedureOf(method))!, req, clientAddress, attempt);
          tenant = admitted.caller?.tenantId;
          extraHeaders = admitted.limitHeaders;
          const input = isUploadMethod(method)
            ? uploadMessages(req, method, settings.maxUploadBytes)
            : requestFromHttp(binding, match.variables, url.searchParams, parseJsonBody(await readBody(req, settings.maxBodyBytes)));
          if (!isUploadMethod(method) && method.methodKind === "server_streaming") applyResume(req, method, input as Message);
          if (method.methodKind !== "unary") holdStream(admitted.caller?.credentialKey ?? `address:${clientAddress}`, abort, completed);
          // A watch may stay open as long as it likes; an upload is bounded (a trickled body must not hold a call forever).
          const fallbackTimeoutMs = method.methodKind === "unary" ? settings.defaultTimeoutMs : method.methodKind === "client_streaming" ? settings.maxTimeoutMs : undefined;
          const timeoutMs = deadlineOf(req.headers, fallbackTimeoutMs, settings.maxTimeoutMs);
          const call: BackendCall = { headers: forwardedHeaders(req, requestId, clientAddress), signal: abort.signal, timeoutMs };
          attempt.forwarded = true;
          response = await callRest(req, method, input, call, abort, binding);
        }
      }
    } catch (error) {
      const failure = toGatewayError(error);
      const limitHeaders = (error as { limitHeaders?: Headers }).limitHeaders;
      if (limitHeaders) limitHeaders.forEach((v, k) => extraHeaders.set(k, v));
      const status = (error as { httpStatus?: number }).httpStatus;
      response = speaksProtocol ? protocolErrorResponse(req, failure) : errorResponse(failure);
      if (status) response = new Response(response.body, { status, headers: response.headers });
      if (attempt && !attempt.forwarded && deps.recordRefusal && isEdgeRefusal(status ?? httpStatusOf(failure))) {
        const { action, caller } = attempt;
        deps.recordRefusal({ action, caller, headers: req.headers, code: failure.code, message: failure.rawMessage, clientAddress, requestId, durationMs: performance.now() - started });
      }
      if (response.status >= 500 && response.status !== 501) {
        log.error("request failed", { requestId, route, status: response.status, err: String((error as Error)?.stack ?? error), cause: String((failure.cause as Error | undefined)?.message ?? "") });
      }
    }
    const headers = new Headers(response.headers);
    extraHeaders.forEach((v, k) => headers.set(k, v));
    headers.set("x-request-id", requestId);
    applySecurityHeaders(headers, route === "/docs" ? { contentSecurityPolicy: response.headers.get("content-security-policy") ?? undefined } : undefined);
    cors.apply(req, headers);
    if (req.method === "HEAD") await response.body?.cancel();
    const answer = new Response(req.method === "HEAD" ? null : response.body, { status: response.status, statusText: response.statusText, headers });
    const record = { method: knownMethods.has(req.method) ? req.method : "OTHER", route, status: answer.status, durationMs: performance.now() - started, requestId, tenant };
    logRequest(log, record);
    deps.metrics.record(record);
    return answer;
  }

  return {
    handle,
    openStreams: () => streams.size,
    closeStreams() {
      for (const stream of streams) stream.abort(new Error("the gateway is shutting down"));
    },
  };
}

/**
 * Addresses that spent their budget of refused credentials, until when: kept in this process
 * (a lookup per request must cost no Redis call), bounded (the oldest block goes first).
 * Every client behind one address shares its block, as it shares the address's bucket.
 */
function createRefusalBlocks(maxAddresses = 10_000) {
  const until = new Map<string, number>();
  return {
    block(address: string | undefined, seconds: number) {
      if (!address) return;
      if (until.size >= maxAddresses) until.delete(until.keys().next().value!);
      until.delete(address);
      until.set(address, Date.now() + seconds * 1000);
    },
    secondsLeft(address: string | undefined): number {
      const end = address === undefined ? undefined : until.get(address);
      if (end === undefined) return 0;
      const left = Math.ceil((end - Date.now()) / 1000);
      if (left <= 0) until.delete(address!);
      return Math.max(0, left);
    },
  };
}

/** The audit action of a method: its full name, "jobmesh.v1.JobService.GetJob". */
function actionOf(method: DescMethod): string {
  return `${method.parent.typeName}.${method.name}`;
}

/** Room for the envelopes around an upload's chunks when it passes through as Connect or gRPC-Web. */
const passthroughFramingBytes = 64 * 1024;

/** Refuses with 429, carrying the RateLimit headers, when the outcome says so. */
function throwIfLimited(outcome: RateLimitOutcome): void {
  if (outcome.allowed) return;
  const limitHeaders = rateLimitHeaders(outcome);
  throw Object.assign(new ConnectError(`rate limit exceeded (${outcome.policy}); retry after ${outcome.retryAfterSeconds ?? 1} s`, Code.ResourceExhausted), { limitHeaders });
}

/** The client's x-request-id when it is a sane token, else a new one (never echo arbitrary bytes into logs). */
function requestIdOf(headers: Headers): string {
  const given = headers.get("x-request-id");
  return given && /^[A-Za-z0-9._:-]{1,128}$/.test(given) ? given : crypto.randomUUID();
}

/** The request body as text, refused with 413 past `maxBytes` (by Content-Length up front, or counted as it arrives). */
async function readBody(req: Request, maxBytes: number): Promise<string> {
  const bytes = await readBodyBytes(req, maxBytes);
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ConnectError("request body is not valid UTF-8", Code.InvalidArgument);
  }
}

/** The request body's bytes, refused with 413 past `maxBytes`. */
async function readBodyBytes(req: Request, maxBytes: number): Promise<Uint8Array<ArrayBuffer>> {
  const declared = Number(req.headers.get("content-length") ?? "0");
  if (declared > maxBytes) throw new BodyTooLargeError(maxBytes, "request body");
  if (!req.body) return new Uint8Array(0);
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
  return bytes;
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

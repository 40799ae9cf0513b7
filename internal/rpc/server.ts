/**
 * One port per service that speaks everything: gRPC (HTTP/2 cleartext), Connect JSON and binary
 * and gRPC-Web over HTTP/1.1 and h2c, plus grpc.health.v1, server reflection (v1 and v1alpha),
 * /healthz, /readyz and /metrics.
 *
 * Node's http2 server cannot take HTTP/1.1 on a plaintext port, so a net.Server peeks at the
 * first bytes of each connection and hands the socket to the http2 server (client preface
 * "PRI * HTTP/2.0") or to the http server (anything else); both share one Connect handler.
 */
import type { DescService } from "@bufbuild/protobuf";
import { createContextValues, type ConnectRouter, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { ServerConfig } from "../config/index.ts";
import type { Logger, Telemetry } from "../telemetry/index.ts";
import { accessRulesOf, httpBindingsOfServices } from "../contract/index.ts";
import { clientAddressKey, createClientAddressResolver } from "./client-address.ts";
import { peerAddressKey } from "./context.ts";
import { createErrorInterceptor } from "./errors.ts";
import { createHealth, type HealthServer } from "./health.ts";
import { sendJson, serveOperatorEndpoint } from "./operator-endpoints.ts";
import { createReadiness, type ReadinessChecks } from "./readiness.ts";
import { createReflectionRegistry, registerReflection } from "./reflection.ts";
import { chainOf, type InterceptorSlots } from "./slots.ts";
import { createTelemetryInterceptor } from "./telemetry.ts";
import { createValidationInterceptor } from "./validation.ts";

/** A service descriptor with its implementation; `bindService` keeps the pair type-checked. */
export interface ServiceBinding {
  service: DescService;
  register(router: ConnectRouter): void;
}

/** Pairs a service with its full implementation: a missing RPC is a compile error. */
export function bindService<S extends DescService>(service: S, impl: ServiceImpl<S>): ServiceBinding {
  return { service, register: (router) => router.service(service, impl) };
}

export interface RpcServerOptions {
  /** Names the server in logs, e.g. "pipelines". */
  name: string;
  host: string;
  /** 0 picks a free port. */
  port: number;
  services: ServiceBinding[];
  log: Logger;
  telemetry: Telemetry;
  /** Dependency checks behind /readyz and the health service, e.g. { postgres, nats, redis }. */
  readiness: ReadinessChecks;
  /**
   * The server's own interceptors, by slot (see slots.ts): telemetry → errors → audit →
   * identity → validate, where telemetry, errors and validate are built in.
   */
  interceptors: InterceptorSlots;
  /** Largest request message read; larger ones get RESOURCE_EXHAUSTED. */
  maxMessageBytes: number;
  /** How long close() lets in-flight calls finish before cutting them off. */
  shutdownGraceMs: number;
  /** Socket limits (streams per connection, idle and header timeouts) and the trusted proxies. */
  server: ServerConfig;
}

export interface RpcServer {
  port: number;
  /** http://host:port — the base URL for Connect, gRPC-Web and gRPC clients alike. */
  url: string;
  health: HealthServer;
  /** Drains: NOT_SERVING, refuse new calls, let in-flight calls finish (bounded), close. */
  close(): Promise<void>;
}

const http2Preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export async function startRpcServer(options: RpcServerOptions): Promise<RpcServer> {
  const { log } = options;
  const limits = options.server;
  const clientAddressOf = createClientAddressResolver(limits.trustedProxies ?? []);
  const descriptors = options.services.map((s) => s.service);
  // Default deny: throws, naming the method, if any RPC lacks its authz rule; and every RPC is
  // reachable over REST through the gateway, so one without an http rule is refused as well.
  accessRulesOf(descriptors);
  httpBindingsOfServices(descriptors);

  const health = createHealth({ services: descriptors.map((s) => s.typeName), status: "NOT_SERVING" });
  const readiness = createReadiness(options.readiness, health, log);
  const registry = createReflectionRegistry(...descriptors.map((s) => s.file));
  const shutdown = new AbortController();

  const handler = connectNodeAdapter({
    routes(router) {
      for (const binding of options.services) binding.register(router);
      health.register(router);
      registerReflection(router, registry, descriptors.map((s) => s.typeName));
    },
    interceptors: chainOf(options.interceptors, {
      telemetry: createTelemetryInterceptor(options.telemetry),
      errors: createErrorInterceptor(log),
      validate: createValidationInterceptor(),
    }),
    readMaxBytes: options.maxMessageBytes,
    contextValues: (req) =>
      createContextValues()
        .set(peerAddressKey, req.socket?.remoteAddress)
        .set(clientAddressKey, clientAddressOf(req.socket?.remoteAddress, req.headers["x-forwarded-for"])),
    shutdownSignal: shutdown.signal,
    fallback: (req, res) => serveOperatorEndpoint(req, res, { readiness, telemetry: options.telemetry }),
  });

  let draining = false;
  let inFlight = 0;
  let drained: (() => void) | undefined;
  const requestListener = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse) => {
    if (draining) {
      // 503 maps to UNAVAILABLE in gRPC and Connect clients: retry elsewhere.
      res.setHeader("connection", "close");
      return sendJson(res, 503, { error: "server is shutting down" });
    }
    inFlight++;
    res.once("close", () => {
      inFlight--;
      if (draining && inFlight === 0) drained?.();
    });
    handler(req, res);
  };

  // Idle keep-alive connections stay open well past the clients' own idle timeouts (the default
  // is 65 s), so a client never reuses a socket the server is closing at that instant (ECONNRESET
  // under load). requestTimeout bounds receiving a request, not answering it: a long WatchJob
  // over HTTP/1.1 is not cut off, and neither is an idle one (no socket timeout is set).
  const h1 = http.createServer(
    {
      keepAliveTimeout: limits.idleTimeoutMs,
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: Math.max(limits.headersTimeoutMs, 300_000),
      // How often those two are checked; Node's 30 s default would let a short timeout run long.
      connectionsCheckingInterval: Math.min(30_000, Math.max(50, Math.floor(limits.headersTimeoutMs / 4))),
    },
    requestListener,
  );
  // The http server starts checking those timeouts when it hears 'listening', which a server fed
  // sockets by hand never does (Node's own tests start it the same way); close() stops it.
  h1.emit("listening");
  // A client over the cap has the excess refused (RST_STREAM REFUSED_STREAM); well-behaved
  // clients read the setting and queue instead.
  const h2 = http2.createServer({ settings: { maxConcurrentStreams: limits.maxConcurrentStreams } }, requestListener);
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    closeWhenIdle(session, limits.idleTimeoutMs, limits.headersTimeoutMs);
  });
  const sockets = new Set<net.Socket>();
  const listener = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    routeConnection(socket, h1, h2, limits.headersTimeoutMs);
  });

  await new Promise<void>((resolve, reject) => {
    listener.once("error", reject);
    listener.listen(options.port, options.host, () => resolve());
  });
  const port = (listener.address() as net.AddressInfo).port;
  const url = `http://${options.host.includes(":") ? `[${options.host}]` : options.host}:${port}`;
  readiness.start();
  log.info({ server: options.name, url, services: descriptors.map((s) => s.typeName) }, "serving");

  return {
    port,
    url,
    health,
    async close() {
      if (draining) return;
      draining = true;
      readiness.stop();
      health.close();
      listener.close();
      // GOAWAY on HTTP/2, close idle keep-alive sockets on HTTP/1.1: no new calls start.
      for (const session of sessions) session.close();
      h1.closeIdleConnections();
      if (inFlight > 0) {
        log.info({ server: options.name, inFlight }, "draining in-flight calls");
        await new Promise<void>((resolve) => {
          drained = resolve;
          setTimeout(resolve, options.shutdownGraceMs).unref();
        });
      }
      shutdown.abort(new Error("server shut down"));
      for (const socket of sockets) socket.destroy();
      h1.close();
      h2.close();
      log.info({ server: options.name }, "stopped");
    },
  };
}

/**
 * Closes an HTTP/2 connection (GOAWAY) that has had no open stream for `idleMs`, or has opened
 * none within `firstStreamMs` (its "headers timeout": each idle session costs the server memory).
 * Counted in streams, not frames: a WatchJob stream with nothing to say keeps its connection, and
 * a client that only sends PINGs does not keep one.
 */
function closeWhenIdle(session: http2.ServerHttp2Session, idleMs: number, firstStreamMs: number) {
  let open = 0;
  let timer: NodeJS.Timeout | undefined;
  const arm = (ms: number) => {
    timer = setTimeout(() => {
      if (open === 0) session.close();
    }, ms);
    timer.unref();
  };
  arm(firstStreamMs);
  session.on("stream", (stream) => {
    open++;
    clearTimeout(timer);
    stream.once("close", () => {
      if (--open === 0 && !session.closed && !session.destroyed) arm(idleMs);
    });
  });
  session.once("close", () => clearTimeout(timer));
}

/**
 * Reads just enough of a new connection to tell HTTP/2 from HTTP/1.1, then hands it over. The
 * connection has `headersTimeoutMs` in all to show which: a socket that sends nothing, or a
 * byte at a time, is not kept (the servers' own timeouts apply only after the hand-over).
 */
function routeConnection(socket: net.Socket, h1: http.Server, h2: http2.Http2Server, headersTimeoutMs: number) {
  let buffered = Buffer.alloc(0);
  const deadline = setTimeout(() => socket.destroy(), headersTimeoutMs);
  socket.once("close", () => clearTimeout(deadline));
  const onData = (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    const n = Math.min(buffered.length, http2Preface.length);
    const isH2 = buffered.subarray(0, n).equals(http2Preface.subarray(0, n));
    if (isH2 && n < http2Preface.length) return; // undecided: wait for more bytes
    clearTimeout(deadline);
    socket.off("data", onData);
    socket.pause();
    socket.unshift(buffered);
    (isH2 ? h2 : h1).emit("connection", socket);
    // The http2 session replays the unshifted bytes itself on the next tick, then reads the
    // native handle; resuming here would flush them as 'data' events that nobody hears, and
    // the session would see the client's second frame as its preface.
    if (!isH2) socket.resume();
  };
  socket.on("data", onData);
  socket.on("error", () => socket.destroy());
}


/**
 * The edge gateway (Deno): REST/JSON, SSE and uploads in front of the services, with
 * authentication, RBAC and rate limits at the edge, and the OpenAPI document. Wiring only:
 * config → Redis, HTTP client, backends, verifier, audit sink → createGateway → Deno.serve → drain
 * on SIGTERM.
 *
 *   deno run --unstable-no-legacy-abort --allow-net --allow-env --allow-read=. --allow-sys cmd/gateway/main.ts   (from the repository root)
 *
 * With JOBMESH_GATEWAY_NATS_URL it records the calls it refuses at the edge on the namespace's
 * audit stream, and also needs --allow-read and --allow-write of JOBMESH_GATEWAY_AUDIT_SPOOL_DIR.
 */
import { Redis } from "ioredis";
import { isSpanContextValid, trace } from "@opentelemetry/api";
import type { Logger } from "pino";
import { fileURLToPath } from "node:url";
// @deno-types="../../gen/jobmesh/v1/auth_pb.d.ts"
import { AuthService, GetCurrentIdentityRequestSchema, GetJwksRequestSchema, type GetCurrentIdentityResponse, type GetJwksResponse } from "../../gen/jobmesh/v1/auth_pb.js";
import { create } from "@bufbuild/protobuf";
import { createAuditSink, type AuditSink } from "../../internal/audit/sink.ts";
import { createAuditTopology } from "../../internal/bus/topology.ts";
import { createTokenVerifier, jwksOf } from "../../internal/auth/token-verifier.ts";
import { connectBus, type Bus } from "../../internal/bus/index.ts";
import { ConfigError } from "../../internal/config/readers.ts";
import { loadGatewayConfig } from "../../internal/config/gateway.ts";
import { roleName } from "../../internal/contract/index.ts";
import { createBackends } from "../../internal/gateway/backend.ts";
import { createRefusalRecorder } from "../../internal/gateway/edge-audit.ts";
import { createEdgeAuth } from "../../internal/gateway/edge-auth.ts";
import { createGatewayLog, createGatewayMetrics, createLineBatcher, type GatewayLog } from "../../internal/gateway/observability.ts";
import { createEdgeRateLimiter } from "../../internal/gateway/rate-limit.ts";
import { createGateway } from "../../internal/gateway/server.ts";
import { createClientAddressResolver } from "../../internal/rpc/client-address.ts";

const repoRoot = fileURLToPath(new URL("../../", import.meta.url));

async function main() {
  const config = loadGatewayConfig(Deno.env.toObject());
  // One write per turn of the event loop, not one per access-log line.
  const stdout = createLineBatcher((text) => console.log(text));
  const log = createGatewayLog(config.logLevel, stdout.write);
  const version = (JSON.parse(await Deno.readTextFile(`${repoRoot}package.json`)) as { version: string }).version;

  // One keep-alive pool to the services, from the address they know the gateway by.
  const client = Deno.createHttpClient({ ...(config.sourceAddress ? { localAddress: config.sourceAddress } : {}), http2: false });
  const backendFetch: typeof fetch = (input, init) => fetch(input, { ...init, client });
  const backends = createBackends({ urls: config.backends, fetch: backendFetch, maxMessageBytes: 64 * 1024 * 1024 });

  const getJwks = AuthService.method.getJwks;
  const whoAmI = AuthService.method.getCurrentIdentity;
  const verifier = createTokenVerifier({
    issuer: config.issuer,
    audience: config.audience,
    async loadJwks() {
      const { keys } = (await backends.unary(getJwks, create(GetJwksRequestSchema), { headers: new Headers(), signal: AbortSignal.timeout(5_000), timeoutMs: 5_000 })) as GetJwksResponse;
      return jwksOf(keys);
    },
  });
  const auth = createEdgeAuth({
    verifier,
    apiKeyCacheSeconds: config.apiKeyCacheSeconds,
    async identifyApiKey(secret) {
      const headers = new Headers({ "x-api-key": secret });
      const { identity } = (await backends.unary(whoAmI, create(GetCurrentIdentityRequestSchema), { headers, signal: AbortSignal.timeout(5_000), timeoutMs: 5_000 })) as GetCurrentIdentityResponse;
      if (!identity) throw new Error("AuthService answered no identity");
      return { tenantId: identity.tenant, subject: identity.subject, roles: identity.roles.map(roleName) };
    },
  });

  const redis = new Redis(config.redisUrl, { maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: false });
  redis.on("error", () => {}); // reported through the limiter's onRedisError; ioredis reconnects by itself
  let lastRedisWarning = 0;
  const rateLimiter = createEdgeRateLimiter({
    redis,
    keyPrefix: `${config.namespace}:gw:rl`,
    settings: config.rateLimits,
    onRedisError(error) {
      if (Date.now() - lastRedisWarning < 10_000) return;
      lastRedisWarning = Date.now();
      log.warn("rate limits fall back to this process's memory: Redis is unreachable", { err: String(error) });
    },
  });

  // The gateway provisions no stream (the services do): until one exists, the sink spools.
  let audit: { bus: Bus; sink: AuditSink } | undefined;
  if (config.audit) {
    const bus = await connectBus({ url: config.audit.natsUrl, name: "jobmesh-gateway", log: pinoShaped(log) }).catch((error: unknown) => {
      // Named by its variable, not its URL: the URL may hold a password.
      throw new Error(`NATS (JOBMESH_GATEWAY_NATS_URL, where refusals are recorded) is unreachable: ${error instanceof Error ? error.message : String(error)}`);
    });
    const sink = await createAuditSink({ nc: bus.nc, js: bus.js, topology: createAuditTopology(config.namespace), spoolFile: `${config.audit.spoolDir}/gateway.spool`, log: pinoShaped(log) });
    audit = { bus, sink };
  }

  const metrics = createGatewayMetrics();
  const clientAddressOf = createClientAddressResolver(config.trustedProxies);
  const gateway = createGateway({
    backends,
    auth,
    rateLimiter,
    log,
    metrics,
    docs: {
      async readAsset(name) {
        try {
          return await Deno.readFile(`${repoRoot}node_modules/swagger-ui-dist/${name}`);
        } catch {
          return undefined;
        }
      },
    },
    clientAddressOf: (peer, forwardedFor) => clientAddressOf(peer, forwardedFor ?? undefined),
    async backendsReady() {
      const entries = Object.entries(config.backends).filter(([, url]) => url !== "");
      const answers = await Promise.all(entries.map(async ([name, url]) => {
        try {
          const res = await backendFetch(`${url}/healthz`, { signal: AbortSignal.timeout(2_000) });
          await res.body?.cancel();
          return [name, res.ok] as const;
        } catch {
          return [name, false] as const;
        }
      }));
      return Object.fromEntries(answers);
    },
    recordRefusal: audit && createRefusalRecorder({
      sink: audit.sink,
      activeTraceId() {
        const span = trace.getActiveSpan()?.spanContext();
        return span && isSpanContextValid(span) ? span.traceId : undefined;
      },
      onFailure: (error) => log.error("an edge refusal was not recorded", { err: String(error) }),
    }),
    settings: { ...config, version },
  });

  const server = Deno.serve(
    {
      hostname: config.host,
      port: config.port,
      onListen({ hostname, port }) {
        const host = hostname.includes(":") ? `[${hostname}]` : hostname;
        // Printed at every log level: it is how `jobmesh up` and the tests learn the URL.
        const serving = { url: `http://${host}:${port}`, backends: config.backends, openapi: `http://${host}:${port}/openapi.json`, docs: `http://${host}:${port}/docs` };
        console.log(JSON.stringify({ level: "info", time: new Date().toISOString(), name: "gateway", msg: "serving", ...serving }));
      },
    },
    (req, info) => gateway.handle(req, (info.remoteAddr as Deno.NetAddr).hostname, info.completed),
  );

  const stop = async () => {
    log.info("draining", { openStreams: gateway.openStreams() });
    // Streams never finish by themselves: they are ended first (SSE clients reconnect, elsewhere),
    // then unary calls in flight get the grace period.
    gateway.closeStreams();
    const grace = setTimeout(() => (stdout.flush(), Deno.exit(0)), config.shutdownGraceMs);
    await server.shutdown();
    clearTimeout(grace);
    await rateLimiter.close();
    redis.disconnect();
    // Every refusal answered is published, or spooled to be published by the next start.
    await audit?.sink.close();
    await audit?.bus.close();
    await metrics.shutdown();
    client.close();
    log.info("stopped");
    stdout.flush();
    Deno.exit(0);
  };
  Deno.addSignalListener("SIGTERM", () => void stop());
  Deno.addSignalListener("SIGINT", () => void stop());
}

/** The gateway's log in the shape the shared NATS and audit code log in (pino's: fields first, then the message). */
function pinoShaped(log: GatewayLog): Logger {
  // An Error becomes its message: JSON.stringify would write it as {}.
  const fieldsOf = (value: unknown): Record<string, unknown> =>
    value instanceof Error ? { err: String(value) } : Object.fromEntries(Object.entries(value as object).map(([k, v]) => [k, v instanceof Error ? String(v) : v]));
  const level = (emit: GatewayLog["info"]) => (first: unknown, msg?: string) => (typeof first === "string" ? emit(first) : emit(msg ?? "", fieldsOf(first)));
  const shaped = { info: level(log.info), warn: level(log.warn), error: level(log.error), fatal: level(log.error), debug: () => {}, trace: () => {}, child: () => shaped };
  // Only the methods above are called; pino's full interface is not needed by those modules.
  return shaped as unknown as Logger;
}

main().catch((error) => {
  const message = error instanceof ConfigError ? error.message : `start-up failed: ${error instanceof Error ? error.message : String(error)}`;
  console.error(message);
  Deno.exit(1);
});

/**
 * The gateway's configuration: a pure function of the environment, like loadConfig, read by
 * cmd/gateway (Deno) at start. Names and defaults are shared with the services where the setting
 * is the same one (ports, Redis, namespace, token issuer and audience, document size limit).
 */
import { ConfigError, readCidrList, readInt, readPattern, readPort, readUrl, type Env } from "./readers.ts";

/** One token bucket: refilled at `perSecond`, holding at most `burst`. */
export interface RateBucket {
  perSecond: number;
  burst: number;
}

export interface GatewayConfig {
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Base URL of each service's process; "" when this mesh does not serve it (its routes answer 501). */
  backends: { jobs: string; pipelines: string; auth: string; audit: string; webhooks: string };
  redisUrl: string;
  namespace: string;
  issuer: string;
  audience: string;
  apiKeyCacheSeconds: number;
  /** Local address of the connections to the services ("" lets the OS pick): what their JOBMESH_TRUSTED_PROXIES names. */
  sourceAddress: string;
  /** Proxies in front of the gateway whose x-forwarded-for names the client. */
  trustedProxies: string[];
  corsOrigins: string[];
  /** Largest JSON request body. */
  maxBodyBytes: number;
  /** Largest upload (JOBMESH_MAX_DOCUMENT_BYTES, as the job service counts it). */
  maxUploadBytes: number;
  /** Deadline of a unary call that names none; a request's grpc-timeout may ask for up to maxTimeoutMs. */
  defaultTimeoutMs: number;
  maxTimeoutMs: number;
  rateLimits: { perTenant: RateBucket; perCredential: RateBucket; perAddress: RateBucket };
  sseHeartbeatMs: number;
  /** Streams (SSE, NDJSON, downloads, uploads) one caller may hold open at once. */
  maxStreamsPerCaller: number;
  logLevel: "debug" | "info" | "warn" | "error" | "silent";
  /** How long SIGTERM lets in-flight requests finish. */
  shutdownGraceMs: number;
  /** Where the calls refused at the edge are recorded; undefined (audit off at the edge) without JOBMESH_GATEWAY_NATS_URL. */
  audit: GatewayAuditConfig | undefined;
}

/**
 * The gateway's audit events go to the namespace's audit stream (`<JOBMESH_NAMESPACE>_audit`,
 * which the services provision), and to a spool on disk while NATS cannot take them.
 */
export interface GatewayAuditConfig {
  /** JOBMESH_GATEWAY_NATS_URL. */
  natsUrl: string;
  /**
   * JOBMESH_GATEWAY_AUDIT_SPOOL_DIR, required with the NATS URL: the gateway may write only there
   * (--allow-write), so whoever starts it must name it. One directory per gateway process.
   */
  spoolDir: string;
}

const logLevels = ["debug", "info", "warn", "error", "silent"] as const;

export function loadGatewayConfig(env: Env): GatewayConfig {
  const logLevel = env.JOBMESH_LOG_LEVEL || "info";
  if (!(logLevels as readonly string[]).includes(logLevel)) throw new ConfigError("JOBMESH_LOG_LEVEL", `must be one of ${logLevels.join(", ")}, got "${logLevel}"`);
  const backend = (name: string, port: number | undefined) => readUrl(env, name, port === undefined ? "" : `http://127.0.0.1:${port}`, ["http:", "https:"]);
  const bucket = (what: string, perSecond: number, burst: number): RateBucket => {
    const bucket = {
      perSecond: readInt(env, `JOBMESH_GATEWAY_RATE_PER_${what}`, perSecond, 1, 1_000_000),
      burst: readInt(env, `JOBMESH_GATEWAY_BURST_PER_${what}`, burst, 1, 10_000_000),
    };
    if (bucket.burst < bucket.perSecond) throw new ConfigError(`JOBMESH_GATEWAY_BURST_PER_${what}`, `must be at least JOBMESH_GATEWAY_RATE_PER_${what} (${bucket.perSecond})`);
    return bucket;
  };
  const sourceAddress = env.JOBMESH_GATEWAY_SOURCE_ADDRESS ?? "";
  if (sourceAddress !== "" && !/^[0-9a-fA-F.:]+$/.test(sourceAddress)) throw new ConfigError("JOBMESH_GATEWAY_SOURCE_ADDRESS", `must be an IP address, got "${sourceAddress}"`);
  const corsOrigins = (env.JOBMESH_GATEWAY_CORS_ORIGINS ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  for (const origin of corsOrigins) {
    if (origin !== "*" && !/^https?:\/\/[^/\s]+$/.test(origin)) throw new ConfigError("JOBMESH_GATEWAY_CORS_ORIGINS", `must list origins like https://app.example.com (no path), got "${origin}"`);
  }
  return {
    host: readPattern(env, "JOBMESH_HOST", "127.0.0.1", /^[0-9a-zA-Z.:-]+$/, "a host name or address"),
    port: readPort(env, "JOBMESH_GATEWAY_PORT", 8080),
    backends: {
      jobs: backend("JOBMESH_JOBS_URL", 50051),
      pipelines: backend("JOBMESH_PIPELINES_URL", 50052),
      auth: backend("JOBMESH_AUTH_URL", 50053),
      // Not served by any process yet (issues 12 and 13): their routes answer 501 unless a URL is given.
      audit: backend("JOBMESH_AUDIT_URL", undefined),
      webhooks: backend("JOBMESH_WEBHOOKS_URL", undefined),
    },
    redisUrl: readUrl(env, "REDIS_URL", "redis://127.0.0.1:6379", ["redis:", "rediss:"]),
    namespace: readPattern(env, "JOBMESH_NAMESPACE", "jobmesh", /^[a-z][a-z0-9_]{0,30}$/, "lower-case letters, digits and _ (max 31)"),
    issuer: readPattern(env, "JOBMESH_TOKEN_ISSUER", "jobmesh", /^\S{1,200}$/, "a non-empty string"),
    audience: readPattern(env, "JOBMESH_TOKEN_AUDIENCE", "jobmesh", /^\S{1,200}$/, "a non-empty string"),
    apiKeyCacheSeconds: readInt(env, "JOBMESH_API_KEY_CACHE_SECONDS", 5, 1, 5),
    sourceAddress,
    trustedProxies: readCidrList(env, "JOBMESH_GATEWAY_TRUSTED_PROXIES") ?? [],
    corsOrigins,
    maxBodyBytes: readInt(env, "JOBMESH_GATEWAY_MAX_BODY_BYTES", 1024 * 1024, 1024, 64 * 1024 * 1024),
    maxUploadBytes: readInt(env, "JOBMESH_MAX_DOCUMENT_BYTES", 50 * 1024 * 1024, 1, 50 * 1024 * 1024),
    defaultTimeoutMs: readInt(env, "JOBMESH_GATEWAY_TIMEOUT_MS", 30_000, 100, 300_000),
    maxTimeoutMs: 300_000,
    rateLimits: {
      perTenant: bucket("TENANT", 500, 1000),
      perCredential: bucket("CREDENTIAL", 200, 400),
      perAddress: bucket("ADDRESS", 20, 40),
    },
    sseHeartbeatMs: readInt(env, "JOBMESH_GATEWAY_SSE_HEARTBEAT_MS", 15_000, 10, 300_000),
    // As many as the jobs service lets one caller watch (JOBMESH_MAX_WATCH_STREAMS_PER_CALLER).
    maxStreamsPerCaller: readInt(env, "JOBMESH_GATEWAY_MAX_STREAMS_PER_CALLER", 100, 1, 1_000_000),
    logLevel: logLevel as GatewayConfig["logLevel"],
    shutdownGraceMs: readInt(env, "JOBMESH_SHUTDOWN_GRACE_MS", 10_000, 0, 300_000),
    audit: readAuditConfig(env),
  };
}

function readAuditConfig(env: Env): GatewayAuditConfig | undefined {
  const natsUrl = readUrl(env, "JOBMESH_GATEWAY_NATS_URL", "", ["nats:", "tls:"]);
  const spoolDir = env.JOBMESH_GATEWAY_AUDIT_SPOOL_DIR ?? "";
  if (natsUrl === "") return undefined;
  if (spoolDir === "") throw new ConfigError("JOBMESH_GATEWAY_AUDIT_SPOOL_DIR", "must name the directory the gateway spools audit events to when JOBMESH_GATEWAY_NATS_URL is set");
  return { natsUrl, spoolDir };
}

/**
 * The one place that reads the environment. Every setting has a default from DESIGN.md's ports
 * table and is validated at start-up; a bad value stops the process with one line naming the
 * variable (see ConfigError).
 */

import { availableParallelism } from "node:os";
import { ConfigError, readBool, readCidrList, readInt, readPattern, readPort, readUrl, type Env } from "./readers.ts";

export { ConfigError } from "./readers.ts";
import { DEFAULT_MAX_INFLATED_BYTES } from "../stages/options.ts";
import { maxStageLossesDefault } from "../jobs/stage-policy.ts";

export interface ServicePorts {
  jobs: number;
  pipelines: number;
  auth: number;
  audit: number;
  webhooks: number;
  gateway: number;
  /** The worker process's /metrics, /healthz and /readyz (it serves no RPCs). */
  workerMetrics: number;
}

export interface Config {
  /** Interface the services listen on. */
  host: string;
  ports: ServicePorts;
  databaseUrl: string;
  redisUrl: string;
  natsUrl: string;
  /** Prefix of every JetStream stream/subject and Redis key; lets test runs share servers. */
  namespace: string;
  /** Slug of the tenant created at start-up (and, until identity lands, the caller's tenant). */
  bootstrapTenant: string;
  logLevel: "trace" | "debug" | "info" | "warn" | "error" | "fatal" | "silent";
  /** Largest request message a service reads, in bytes. */
  maxMessageBytes: number;
  /** How long in-flight calls may run after SIGTERM before the process exits anyway. */
  shutdownGraceMs: number;
  /** OTLP/HTTP endpoint for traces, or "" for none. */
  otlpEndpoint: string;
  /** Where `jobmesh up` keeps local server data and writes mesh.json. */
  dataDir: string;
  /** Time-to-live of cached pipeline versions in Redis. */
  cacheTtlSeconds: number;
  /** The server URLs the environment named explicitly (`jobmesh up` starts local servers for the rest). */
  explicitUrls: { databaseUrl?: string; redisUrl?: string; natsUrl?: string };
  /** Largest document a job may carry or an upload may store, in bytes. */
  maxDocumentBytes: number;
  /** How long a job result is kept when the pipeline does not say. */
  resultRetentionSeconds: number;
  /** Stage tasks one worker process runs at once. */
  workerConcurrency: number;
  /** Lifetime of a worker heartbeat in Redis; the reaper requeues attempts whose heartbeat is older. */
  heartbeatTtlMs: number;
  /** Open WatchJob streams one caller (tenant and subject) may hold in one jobs process. */
  maxWatchStreamsPerCaller: number;
  /** Bytes a tenant may hold in uploads and results, unless its tenants row sets its own quota. */
  tenantStorageQuotaBytes: number;
  /** max_bytes of the work and events streams (0: no limit). */
  streamMaxBytes: number;
  /** max_bytes of the uploads and results object store buckets (0: no limit). */
  bucketMaxBytes: number;
  /** Times one stage of a job may lose its worker or thread (requeued apart from its retries) before the job fails. */
  maxStageLosses: number;
  /** Threads of one worker process that run the CPU-bound stages (detect, parse, enrich). */
  stageThreads: number;
  /** Heap limit of each stage thread, in MiB: a stage that needs more loses its own attempt, not the process. */
  stageHeapMb: number;
  /** Bytes a DOCX's zip parts or a PDF's streams may inflate to in all before parse fails with document_too_large. */
  maxInflatedBytes: number;
  /**
   * TEST ONLY: lets URL documents point at 127.0.0.0/8 and ::1 so tests can serve them from a local
   * HTTP server. Never enable it in a deployment: it opens the workers to SSRF against the host.
   */
  allowLoopbackFetchForTests: boolean;
  /** Identity: tokens, keys, the first admin, login rate limits. */
  auth: AuthConfig;
  audit: AuditConfig;
  webhooks: WebhooksConfig;
  /**
   * The JOBMESH_GATEWAY_* settings as given, for `jobmesh up` to pass to the gateway process,
   * which validates them itself (internal/config/gateway.ts).
   */
  gatewayEnv: Record<string, string>;
  /** Limits of every server socket, and whose x-forwarded-for is believed. */
  server: ServerConfig;
}

export interface ServerConfig {
  /** HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS); the excess is refused. */
  maxConcurrentStreams: number;
  /** A keep-alive HTTP/1.1 connection between requests, or an HTTP/2 connection with no open stream, is closed after this long. */
  idleTimeoutMs: number;
  /** A new connection must show its protocol, an HTTP/1.1 request its headers, an HTTP/2 connection its first stream, within this long. */
  headersTimeoutMs: number;
  /**
   * CIDRs of the proxies whose x-forwarded-for names the client (the gateway); empty believes no
   * one. Undefined when JOBMESH_TRUSTED_PROXIES is not set: every binary then trusts no one.
   */
  trustedProxies: string[] | undefined;
}

export interface AuthConfig {
  /** Email of the admin `jobmesh up` creates in the bootstrap tenant when it has no users. */
  adminEmail: string;
  /** That admin's password; "" generates one and prints it once. */
  adminPassword: string;
  /** `iss` and `aud` of access tokens. */
  issuer: string;
  audience: string;
  /** Lifetime of an access token (at most 15 minutes). */
  accessTokenTtlSeconds: number;
  /** Lifetime of a refresh token. */
  refreshTokenTtlSeconds: number;
  /** How long a session lasts from its login, however often its refresh token is rotated. */
  sessionMaxAgeSeconds: number;
  /** Base64 of 32 bytes that seal the private signing keys in Postgres; "" keeps a key file in signingKeyDir. */
  keyEncryptionKey: string;
  /** Where the key-encryption key file lives when JOBMESH_KEY_ENCRYPTION_KEY is not set. */
  signingKeyDir: string;
  /** Age after which a new signing key replaces the current one. */
  signingKeyRotationSeconds: number;
  /** AuthService URL to fetch the JWKS from; "" reads the public keys from Postgres. */
  authUrl: string;
  /** Failed logins of one account within the window before it must wait. */
  loginMaxFailuresPerAccount: number;
  /** Failed logins from one client address (an IPv6 /64) within the window before it must wait. */
  loginMaxFailuresPerIp: number;
  loginWindowSeconds: number;
  /** How long a verified API key is cached in Redis (at most 5 s: revocation reaches every service within it). */
  apiKeyCacheSeconds: number;
}

const logLevels = ["trace", "debug", "info", "warn", "error", "fatal", "silent"] as const;

/** Reads and validates the configuration; throws ConfigError naming the first bad variable. */
export function loadConfig(env: Env = process.env): Config {
  const logLevel = env.JOBMESH_LOG_LEVEL || "info";
  if (!(logLevels as readonly string[]).includes(logLevel)) {
    throw new ConfigError("JOBMESH_LOG_LEVEL", `must be one of ${logLevels.join(", ")}, got "${logLevel}"`);
  }
  const dataDir = env.JOBMESH_DATA_DIR || ".jobmesh";
  return {
    host: readPattern(env, "JOBMESH_HOST", "127.0.0.1", /^[0-9a-zA-Z.:-]+$/, "a host name or address"),
    ports: {
      gateway: readPort(env, "JOBMESH_GATEWAY_PORT", 8080),
      jobs: readPort(env, "JOBMESH_JOBS_PORT", 50051),
      pipelines: readPort(env, "JOBMESH_PIPELINES_PORT", 50052),
      auth: readPort(env, "JOBMESH_AUTH_PORT", 50053),
      audit: readPort(env, "JOBMESH_AUDIT_PORT", 50054),
      webhooks: readPort(env, "JOBMESH_WEBHOOKS_PORT", 50055),
      workerMetrics: readPort(env, "JOBMESH_WORKER_METRICS_PORT", 50056),
    },
    databaseUrl: readUrl(env, "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/jobmesh", ["postgres:", "postgresql:"]),
    redisUrl: readUrl(env, "REDIS_URL", "redis://127.0.0.1:6379", ["redis:", "rediss:"]),
    natsUrl: readUrl(env, "NATS_URL", "nats://127.0.0.1:4222", ["nats:", "tls:"]),
    namespace: readPattern(env, "JOBMESH_NAMESPACE", "jobmesh", /^[a-z][a-z0-9_]{0,30}$/, "lower-case letters, digits and _ (max 31)"),
    bootstrapTenant: readPattern(env, "JOBMESH_BOOTSTRAP_TENANT", "default", /^[a-z][a-z0-9-]{0,62}$/, "a lower-case slug"),
    logLevel: logLevel as Config["logLevel"],
    maxMessageBytes: readInt(env, "JOBMESH_MAX_MESSAGE_BYTES", 8 * 1024 * 1024, 1024, 64 * 1024 * 1024),
    shutdownGraceMs: readInt(env, "JOBMESH_SHUTDOWN_GRACE_MS", 10_000, 0, 300_000),
    otlpEndpoint: readUrl(env, "JOBMESH_OTLP_ENDPOINT", "", ["http:", "https:"]),
    dataDir,
    cacheTtlSeconds: readInt(env, "JOBMESH_CACHE_TTL_SECONDS", 3600, 1, 86_400 * 30),
    explicitUrls: {
      databaseUrl: env.DATABASE_URL || undefined,
      redisUrl: env.REDIS_URL || undefined,
      natsUrl: env.NATS_URL || undefined,
    },
    maxDocumentBytes: readInt(env, "JOBMESH_MAX_DOCUMENT_BYTES", 50 * 1024 * 1024, 1, 50 * 1024 * 1024),
    resultRetentionSeconds: readInt(env, "JOBMESH_RESULT_RETENTION_SECONDS", 7 * 86_400, 60, 365 * 86_400),
    workerConcurrency: readInt(env, "JOBMESH_WORKER_CONCURRENCY", 32, 1, 256),
    heartbeatTtlMs: readInt(env, "JOBMESH_HEARTBEAT_TTL_MS", 15_000, 500, 600_000),
    maxWatchStreamsPerCaller: readInt(env, "JOBMESH_MAX_WATCH_STREAMS_PER_CALLER", 100, 1, 1_000_000),
    tenantStorageQuotaBytes: readInt(env, "JOBMESH_TENANT_STORAGE_QUOTA_BYTES", 2 * 1024 ** 3, 0, Number.MAX_SAFE_INTEGER),
    // JetStream reserves each stream's max_bytes against the server's storage when the stream is
    // created, so these must fit the server's disk together (a deployment with many tenants
    // raises them).
    streamMaxBytes: readInt(env, "JOBMESH_STREAM_MAX_BYTES", 1024 ** 3, 0, Number.MAX_SAFE_INTEGER),
    bucketMaxBytes: readInt(env, "JOBMESH_BUCKET_MAX_BYTES", 4 * 1024 ** 3, 0, Number.MAX_SAFE_INTEGER),
    maxStageLosses: readInt(env, "JOBMESH_MAX_STAGE_LOSSES", maxStageLossesDefault, 1, 100),
    stageThreads: readInt(env, "JOBMESH_STAGE_THREADS", availableParallelism(), 1, 256),
    stageHeapMb: readInt(env, "JOBMESH_STAGE_HEAP_MB", 512, 64, 65_536),
    maxInflatedBytes: readInt(env, "JOBMESH_MAX_INFLATED_BYTES", DEFAULT_MAX_INFLATED_BYTES, 1, 4096 * 1024 * 1024),
    allowLoopbackFetchForTests: readBool(env, "JOBMESH_ALLOW_LOOPBACK_FETCH"),
    auth: loadAuthConfig(env, dataDir),
    audit: {
      enabled: env.JOBMESH_AUDIT === undefined || env.JOBMESH_AUDIT === "" ? true : readBool(env, "JOBMESH_AUDIT"),
      spoolDir: env.JOBMESH_AUDIT_SPOOL_DIR || `${dataDir}/audit-spool`,
      checkpointIntervalMs: readInt(env, "JOBMESH_AUDIT_CHECKPOINT_INTERVAL_MS", 2_000, 50, 5_000),
      retentionDays: readInt(env, "JOBMESH_AUDIT_RETENTION_DAYS", 400, 1, 36_500),
      checkpointStreamMaxBytes: readInt(env, "JOBMESH_AUDIT_CHECKPOINT_STREAM_MAX_BYTES", 10 * 1024 ** 3, 0, Number.MAX_SAFE_INTEGER),
    },
    webhooks: loadWebhooksConfig(env),
    gatewayEnv: Object.fromEntries(Object.entries(env).filter((e): e is [string, string] => e[0].startsWith("JOBMESH_GATEWAY_") && e[1] !== undefined)),
    server: {
      maxConcurrentStreams: readInt(env, "JOBMESH_MAX_CONCURRENT_STREAMS", 100, 1, 10_000),
      idleTimeoutMs: readInt(env, "JOBMESH_IDLE_TIMEOUT_MS", 65_000, 100, 3_600_000),
      headersTimeoutMs: readInt(env, "JOBMESH_HEADERS_TIMEOUT_MS", 10_000, 100, 300_000),
      trustedProxies: readCidrList(env, "JOBMESH_TRUSTED_PROXIES"),
    },
  };
}

/** How calls are recorded (every service) and stored (cmd/audit). */
export interface AuditConfig {
  /** JOBMESH_AUDIT (default true): false serves without the audit interceptor (benchmarks compare both). */
  enabled: boolean;
  /** Where a process spools audit events while NATS is unreachable (JOBMESH_AUDIT_SPOOL_DIR). */
  spoolDir: string;
  /** How often the audit consumer signs a checkpoint while events arrive; at most 5 s (the bound). */
  checkpointIntervalMs: number;
  /** Default retention of a tenant's audit events, in days; whole monthly partitions are dropped. */
  retentionDays: number;
  /**
   * max_bytes of the audit checkpoints stream (JOBMESH_AUDIT_CHECKPOINT_STREAM_MAX_BYTES, default
   * 10 GiB, 0 = none; it also keeps at most 400 days). Each tenant's latest checkpoint is kept
   * apart, without limit, whatever this lets go.
   */
  checkpointStreamMaxBytes: number;
}

/** Who may be subscribed (internal/netpolicy's NetPolicy) and how deliveries are retried (cmd/webhooks). */
export interface WebhooksConfig {
  /** JOBMESH_WEBHOOKS_ALLOW_HTTP (default false): http:// receivers. `jobmesh up` on a loopback JOBMESH_HOST turns it on unless set. */
  allowHttp: boolean;
  /** JOBMESH_WEBHOOKS_ALLOW_LOOPBACK (default false): receivers on 127.0.0.0/8 and ::1. `jobmesh up` on a loopback JOBMESH_HOST turns it on unless set. */
  allowLoopback: boolean;
  /**
   * TEST ONLY: exact "host:port" loopback receivers allowed (JOBMESH_WEBHOOKS_ALLOW_HOSTS, comma
   * list). Never set it in a deployment; `jobmesh up` logs a warning when it is set.
   */
  allowHosts: string[];
  /** Which of allowHttp/allowLoopback the environment set, so `jobmesh up` changes only the defaults. */
  explicitPolicy: { allowHttp?: boolean; allowLoopback?: boolean };
  /** Delay before each attempt, from the first (JOBMESH_WEBHOOKS_RETRY_SCHEDULE; default Svix's 0,5s,5m,30m,2h,5h,10h,10h). */
  retryScheduleMs: number[];
  /** An attempt without a complete answer in this long fails (JOBMESH_WEBHOOKS_TIMEOUT_MS, default 15 s). */
  timeoutMs: number;
  /** A subscription failing without a success for this long is disabled (JOBMESH_WEBHOOKS_DISABLE_AFTER_MS, default 5 days). */
  disableAfterMs: number;
  /** Base of the result links in deliveries (JOBMESH_PUBLIC_URL, default the local gateway). */
  publicUrl: string;
}

const durationUnitsMs: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "0,5s,5m,30m,2h" → milliseconds; a bare number is milliseconds. At most 50 entries of at most 7 days each. */
function readDurationList(env: Env, name: string, fallback: string): number[] {
  const raw = env[name] || fallback;
  const entries = raw.split(",").map((s) => s.trim());
  const values = entries.map((entry) => {
    const match = /^(\d{1,12})(ms|s|m|h|d)?$/.exec(entry);
    const ms = match ? Number(match[1]) * durationUnitsMs[match[2] ?? "ms"] : NaN;
    if (!Number.isSafeInteger(ms) || ms > 7 * 86_400_000) {
      throw new ConfigError(name, `must be a comma list of durations such as 0,5s,5m,2h (each at most 7d), got "${raw}"`);
    }
    return ms;
  });
  if (values.length === 0 || values.length > 50) throw new ConfigError(name, `must hold 1..50 durations, got ${values.length}`);
  return values;
}

function loadWebhooksConfig(env: Env): WebhooksConfig {
  const explicit = (name: string) => (env[name] === undefined || env[name] === "" ? undefined : readBool(env, name));
  const allowHosts = (env.JOBMESH_WEBHOOKS_ALLOW_HOSTS ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  for (const host of allowHosts) {
    if (!/^(\[[0-9a-fA-F:.]+\]|[0-9A-Za-z.-]+):\d{1,5}$/.test(host)) {
      throw new ConfigError("JOBMESH_WEBHOOKS_ALLOW_HOSTS", `must be a comma list of exact host:port, got "${host}"`);
    }
  }
  const explicitPolicy = { allowHttp: explicit("JOBMESH_WEBHOOKS_ALLOW_HTTP"), allowLoopback: explicit("JOBMESH_WEBHOOKS_ALLOW_LOOPBACK") };
  return {
    allowHttp: explicitPolicy.allowHttp ?? false,
    allowLoopback: explicitPolicy.allowLoopback ?? false,
    allowHosts,
    explicitPolicy,
    retryScheduleMs: readDurationList(env, "JOBMESH_WEBHOOKS_RETRY_SCHEDULE", "0,5s,5m,30m,2h,5h,10h,10h"),
    timeoutMs: readInt(env, "JOBMESH_WEBHOOKS_TIMEOUT_MS", 15_000, 100, 300_000),
    disableAfterMs: readInt(env, "JOBMESH_WEBHOOKS_DISABLE_AFTER_MS", 5 * 86_400_000, 1000, 365 * 86_400_000),
    publicUrl: readUrl(env, "JOBMESH_PUBLIC_URL", "http://127.0.0.1:8080", ["http:", "https:"]).replace(/\/+$/, ""),
  };
}

function loadAuthConfig(env: Env, dataDir: string): AuthConfig {
  const adminPassword = env.JOBMESH_ADMIN_PASSWORD ?? "";
  if (adminPassword !== "" && (adminPassword.length < 12 || adminPassword.length > 256)) {
    throw new ConfigError("JOBMESH_ADMIN_PASSWORD", "must be 12..256 characters");
  }
  // Renamed when the per-address limit began counting failures only: a silent ignore would drop the limit someone set.
  if (env.JOBMESH_LOGIN_MAX_ATTEMPTS_PER_IP) throw new ConfigError("JOBMESH_LOGIN_MAX_ATTEMPTS_PER_IP", "is now JOBMESH_LOGIN_MAX_FAILURES_PER_IP (it counts failed logins only)");
  const keyEncryptionKey = env.JOBMESH_KEY_ENCRYPTION_KEY ?? "";
  if (keyEncryptionKey !== "" && Buffer.from(keyEncryptionKey, "base64").length !== 32) {
    throw new ConfigError("JOBMESH_KEY_ENCRYPTION_KEY", "must be the base64 of 32 random bytes (openssl rand -base64 32)");
  }
  return {
    adminEmail: readPattern(env, "JOBMESH_ADMIN_EMAIL", "admin@jobmesh.local", /^[^\s@]+@[^\s@]+\.[^\s@]+$/, "an email address"),
    adminPassword,
    issuer: readPattern(env, "JOBMESH_TOKEN_ISSUER", "jobmesh", /^\S{1,200}$/, "a non-empty string"),
    audience: readPattern(env, "JOBMESH_TOKEN_AUDIENCE", "jobmesh", /^\S{1,200}$/, "a non-empty string"),
    accessTokenTtlSeconds: readInt(env, "JOBMESH_ACCESS_TOKEN_TTL_SECONDS", 900, 10, 900),
    refreshTokenTtlSeconds: readInt(env, "JOBMESH_REFRESH_TOKEN_TTL_SECONDS", 30 * 86_400, 60, 365 * 86_400),
    sessionMaxAgeSeconds: readInt(env, "JOBMESH_SESSION_MAX_AGE_SECONDS", 30 * 86_400, 1, 365 * 86_400),
    keyEncryptionKey,
    signingKeyDir: env.JOBMESH_SIGNING_KEY_DIR || `${dataDir}/keys`,
    signingKeyRotationSeconds: readInt(env, "JOBMESH_SIGNING_KEY_ROTATION_SECONDS", 30 * 86_400, 3600, 365 * 86_400),
    authUrl: readUrl(env, "JOBMESH_AUTH_URL", "", ["http:", "https:"]),
    loginMaxFailuresPerAccount: readInt(env, "JOBMESH_LOGIN_MAX_FAILURES_PER_ACCOUNT", 10, 1, 10_000),
    loginMaxFailuresPerIp: readInt(env, "JOBMESH_LOGIN_MAX_FAILURES_PER_IP", 100, 1, 100_000),
    loginWindowSeconds: readInt(env, "JOBMESH_LOGIN_WINDOW_SECONDS", 300, 1, 86_400),
    apiKeyCacheSeconds: readInt(env, "JOBMESH_API_KEY_CACHE_SECONDS", 5, 1, 5),
  };
}

/**
 * How each service is served from the shared infrastructure. `cmd/<service>` serves one;
 * `jobmesh up` serves them all in one process.
 */
import type { DescService } from "@bufbuild/protobuf";
import type { Interceptor, ServiceImpl } from "@connectrpc/connect";
import { createAuditInterceptor } from "../rpc/audit.ts";
import { createApiKeys, createAuthDomain, createTokenVerifier, createUserStatus, ensureAdmin, loadPublicJwks, type BootstrapAdmin, type TokenVerifier } from "../auth/index.ts";
import { AuthService, createAuthService } from "../auth/service.ts";
import { createAuditDomain, startAuditStore, type AuditStore, type AuditTopology } from "../audit/index.ts";
import { AuditService, createAuditService } from "../audit/service.ts";
import { loadKeyEncryptionKey } from "../sealing/index.ts";
import { selectUsersByEmail } from "../auth/users.ts";
import { createPipelineDomain } from "../pipelines/pipelines.ts";
import { createPipelineService, PipelineService } from "../pipelines/service.ts";
import { accessRulesOf, meshServices, permissionsNamedBy } from "../contract/index.ts";
import { createBootstrapTenantInterceptor } from "../rpc/bootstrap-tenant.ts";
import { createIdentityInterceptors, createRemoteJwksLoader } from "../rpc/identity.ts";
import { bindService, startRpcServer, type RpcServer } from "../rpc/server.ts";
import { createJobDomain } from "../jobs/jobs.ts";
import { registerQueueDepth } from "../jobs/metrics.ts";
import { createDirectPublisher, createOutboxRelay, type OutboxRelay } from "../outbox/index.ts";
import { createReaper, type Reaper } from "../jobs/reaper.ts";
import { createJobService, JobService } from "../jobs/service.ts";
import { openBuckets, type Topology } from "../bus/topology.ts";
import { createJobWatcher, type JobWatcher } from "../jobs/watch.ts";
import { startWorker, type Worker } from "../worker/worker.ts";
import { createWebhookDomain, signingSecretsOf } from "../webhooks/index.ts";
import { createWebhookService, WebhookService } from "../webhooks/service.ts";
import { startWebhookDelivery, type WebhookDelivery } from "../webhooks/delivery.ts";
import { sendTestPing } from "../webhooks/send.ts";
import type { Infra } from "./infra.ts";

/**
 * "enforce": every call needs a JWT or an API key and a role that grants the method's permission.
 * "bootstrap": every caller acts as an admin of the bootstrap tenant (the mesh before issue 5).
 */
export type IdentityMode = "bootstrap" | "enforce";

/** The mode services start in. Flipping it to "enforce" turns authentication on mesh-wide. */
export const defaultIdentityMode: IdentityMode = "enforce";

const verifiers = new WeakMap<Infra, TokenVerifier>();

/** One JWKS-backed verifier per process: from AuthService when JOBMESH_AUTH_URL is set, else from Postgres. */
function verifierOf(infra: Infra): TokenVerifier {
  let verifier = verifiers.get(infra);
  if (!verifier) {
    const { auth } = infra.config;
    verifier = createTokenVerifier({
      loadJwks: auth.authUrl ? createRemoteJwksLoader(auth.authUrl) : () => loadPublicJwks(infra.db, auth.accessTokenTtlSeconds),
      issuer: auth.issuer,
      audience: auth.audience,
    });
    verifiers.set(infra, verifier);
  }
  return verifier;
}

/** The identity interceptors of a server of `services`: the only place that decides how callers are known. */
export function identityFor(infra: Infra, services: DescService[], mode: IdentityMode = defaultIdentityMode): Interceptor[] {
  if (mode === "bootstrap") return [createBootstrapTenantInterceptor(infra.bootstrapTenantId)];
  return createIdentityInterceptors({
    rules: accessRulesOf(services),
    verifier: verifierOf(infra),
    apiKeys: createApiKeys({ db: infra.db, cache: infra.cache, pageTokens: infra.pageTokens, log: infra.log, cacheSeconds: infra.config.auth.apiKeyCacheSeconds }),
    users: createUserStatus({ db: infra.db, cache: infra.cache, cacheSeconds: infra.config.auth.apiKeyCacheSeconds }),
  });
}

/** What every served service may be given beyond its defaults. */
export interface ServeOptions {
  /**
   * Interceptors for the audit slot (outside identity: they see refused calls too). Undefined:
   * the audit recorder into the process's sink when JOBMESH_AUDIT is on; [] turns auditing off.
   */
  audit?: Interceptor[];
}

/** The audit slot of a server named `recorder` ("jobs"): what `options` says, else the recorder when auditing is on. */
export async function auditSlotOf(infra: Infra, recorder: string, options: ServeOptions): Promise<Interceptor[]> {
  if (options.audit !== undefined) return options.audit;
  if (!infra.config.audit.enabled) return [];
  const sink = await infra.auditSink();
  return [createAuditInterceptor({ sink, recorder, onFailure: (error) => infra.log.error({ err: error, recorder }, "audit event not recorded") })];
}

/**
 * One service on its own port with the mesh's runtime: the process's logger, telemetry and
 * readiness, the audit slot (named `recorder`), the identity interceptors and the shared limits.
 */
async function serveService<S extends DescService>(infra: Infra, spec: { name: string; port: number; service: S; implementation: ServiceImpl<S>; mode: IdentityMode; options: ServeOptions }): Promise<RpcServer> {
  return startRpcServer({
    name: spec.name,
    host: infra.config.host,
    port: spec.port,
    services: [bindService(spec.service, spec.implementation)],
    log: infra.log,
    telemetry: infra.telemetry,
    readiness: infra.readiness,
    interceptors: { audit: await auditSlotOf(infra, spec.name, spec.options), identity: identityFor(infra, [spec.service], spec.mode) },
    maxMessageBytes: infra.config.maxMessageBytes,
    shutdownGraceMs: infra.config.shutdownGraceMs,
    server: infra.config.server,
  });
}

export async function servePipelines(infra: Infra, port = infra.config.ports.pipelines, mode: IdentityMode = defaultIdentityMode, options: ServeOptions = {}): Promise<RpcServer> {
  const pipelines = createPipelineDomain({
    db: infra.db,
    cache: infra.cache,
    pageTokens: infra.pageTokens,
    validator: infra.validator,
    cacheTtlSeconds: infra.config.cacheTtlSeconds,
  });
  await pipelines.ensureBuiltIns(infra.bootstrapTenantId);
  return serveService(infra, { name: "pipelines", port, service: PipelineService, implementation: createPipelineService(pipelines), mode, options });
}

/** JobService with the processes' background parts: the outbox relay and the lease reaper. */
export interface JobsServer extends RpcServer {
  relay: OutboxRelay;
  reaper: Reaper;
  topology: Topology;
  /** The process's WatchJob fan-out. */
  watcher: JobWatcher;
}

export interface ServeJobsOptions extends ServeOptions {
  /** Start the outbox relay (default true); tests turn it off to play a relay crash. */
  relay?: boolean;
  /** How callers are identified; defaults to defaultIdentityMode. */
  identityMode?: IdentityMode;
}

export async function serveJobs(infra: Infra, port = infra.config.ports.jobs, options: ServeJobsOptions = {}): Promise<JobsServer> {
  const { config } = infra;
  const { topology } = infra;
  const buckets = await openBuckets(topology, infra.bus.js);
  const pipelines = createPipelineDomain({
    db: infra.db,
    cache: infra.cache,
    pageTokens: infra.pageTokens,
    validator: infra.validator,
    cacheTtlSeconds: config.cacheTtlSeconds,
  });
  await pipelines.ensureBuiltIns(infra.bootstrapTenantId);
  // Without the relay (tests that play it), nothing is published directly either.
  const publisher = createDirectPublisher({ db: infra.db, send: infra.bus.streams.publish, tracer: infra.telemetry.tracer, log: infra.log, enabled: options.relay !== false });
  const jobs = createJobDomain({
    publisher,
    db: infra.db,
    redis: infra.cache.redis,
    nc: infra.bus.nc,
    topology,
    buckets,
    pipelines,
    pageTokens: infra.pageTokens,
    log: infra.log,
    maxDocumentBytes: config.maxDocumentBytes,
    storageQuotaBytes: config.tenantStorageQuotaBytes,
    allowLoopbackFetch: config.allowLoopbackFetchForTests,
  });
  registerQueueDepth(infra.bus.jsm, topology);
  const relay: OutboxRelay = options.relay === false
    ? { publishBatch: () => Promise.resolve(0), stop: () => Promise.resolve() }
    : createOutboxRelay({ db: infra.db, js: infra.bus.js, log: infra.log, tracer: infra.telemetry.tracer });
  const reaper = createReaper({ db: infra.db, redis: infra.cache.redis, topology, buckets, log: infra.log, heartbeatTtlMs: config.heartbeatTtlMs });
  const watcher = createJobWatcher({ db: infra.db, nc: infra.bus.nc, topology, log: infra.log, maxStreamsPerCaller: config.maxWatchStreamsPerCaller });
  const implementation = createJobService({ jobs, db: infra.db, watcher, uploads: buckets.uploads, results: buckets.results, js: infra.bus.js, maxDocumentBytes: config.maxDocumentBytes, storageQuotaBytes: config.tenantStorageQuotaBytes });
  const server = await serveService(infra, { name: "jobs", port, service: JobService, implementation, mode: options.identityMode ?? defaultIdentityMode, options });
  return {
    ...server,
    relay,
    reaper,
    topology,
    watcher,
    async close() {
      await server.close();
      await watcher.close();
      await reaper.stop();
      await relay.stop();
      await publisher.close();
    },
  };
}

export interface StartWorkersOptions {
  /** Stage tasks run at once; defaults to the configuration. */
  concurrency?: number;
  workerId?: string;
}

/** A stage worker on the shared infrastructure (`cmd/worker`, or in-process in `jobmesh up`). */
export async function startWorkers(infra: Infra, options: StartWorkersOptions = {}): Promise<Worker> {
  const { config } = infra;
  const { topology } = infra;
  const buckets = await openBuckets(topology, infra.bus.js);
  return startWorker({
    db: infra.db,
    js: infra.bus.js,
    streams: infra.bus.streams,
    nc: infra.bus.nc,
    redis: infra.cache.redis,
    topology,
    buckets,
    log: infra.log,
    tracer: infra.telemetry.tracer,
    meter: infra.telemetry.meter,
    concurrency: options.concurrency ?? config.workerConcurrency,
    heartbeatTtlMs: config.heartbeatTtlMs,
    stageThreads: config.stageThreads,
    stageHeapMb: config.stageHeapMb,
    maxInflatedBytes: config.maxInflatedBytes,
    maxDocumentBytes: config.maxDocumentBytes,
    allowLoopbackFetch: config.allowLoopbackFetchForTests,
    resultRetentionSeconds: config.resultRetentionSeconds,
    workerId: options.workerId,
  });
}

/** AuthService always enforces identity: user and key management open to anyone would be a takeover. */
export async function serveAuth(infra: Infra, port = infra.config.ports.auth, options: ServeOptions = {}): Promise<RpcServer> {
  const auth = await createAuthDomain({ db: infra.db, cache: infra.cache, pageTokens: infra.pageTokens, log: infra.log, config: infra.config.auth });
  const implementation = createAuthService(auth, permissionsNamedBy(meshServices), { loginTenantOf: (email, tenant) => loginTenantOf(infra, email, tenant) });
  return serveService(infra, { name: "auth", port, service: AuthService, implementation, mode: "enforce", options });
}

/**
 * The tenant a login attempt is audited under, before it is decided: the tenant of the only
 * account with that email (resolved as the login resolves it), else the tenant the request
 * named, else the bootstrap tenant. Never fails the login: unknown is "" (the unattributed chain).
 */
async function loginTenantOf(infra: Infra, email: string, tenant: string): Promise<string | undefined> {
  try {
    const found = await selectUsersByEmail(infra.db, email, tenant);
    if (found.length === 1) return found[0]!.tenant_id;
    if (tenant === "") return infra.bootstrapTenantId;
    const { rows } = await infra.db.query<{ id: string }>("SELECT id FROM tenants WHERE slug = $1 OR id::text = $1", [tenant]);
    return rows[0]?.id;
  } catch (error) {
    infra.log.warn({ err: error }, "login tenant for the audit log not resolved");
    return undefined;
  }
}

/** AuditService with the store: the consumer that chains, stores and signs what every process records. */
export interface AuditServer extends RpcServer {
  store: AuditStore;
  topology: AuditTopology;
}

/**
 * AuditService always enforces identity (the audit log is admin-only), and runs the audit store
 * beside it: a replica that does not hold the store's lock answers queries and takes over when
 * the one that does dies. close() stops the server, then the store (its batch in hand committed).
 */
export async function serveAudit(infra: Infra, port = infra.config.ports.audit, options: ServeOptions = {}): Promise<AuditServer> {
  const { config } = infra;
  const topology = infra.topology.audit;
  const keyEncryptionKey = await loadKeyEncryptionKey(config.auth.keyEncryptionKey, config.auth.signingKeyDir);
  const deps = { db: infra.db, js: infra.bus.js, jsm: infra.bus.jsm, topology, keyEncryptionKey, log: infra.log };
  const domain = createAuditDomain({ ...deps, pageTokens: infra.pageTokens, retentionDays: config.audit.retentionDays });
  // Events recorded before a tenant was known (a bad credential) join the deployment operator's chain.
  const store = await startAuditStore({
    ...deps,
    unattributedTenantId: infra.bootstrapTenantId,
    checkpointIntervalMs: config.audit.checkpointIntervalMs,
    retentionDays: config.audit.retentionDays,
  });
  let server: RpcServer;
  try {
    server = await serveService(infra, { name: "audit", port, service: AuditService, implementation: createAuditService(domain), mode: "enforce", options });
  } catch (error) {
    await store.stop();
    throw error;
  }
  return {
    ...server,
    store,
    topology,
    async close() {
      await server.close();
      await store.stop();
    },
  };
}

/** WebhookService with the delivery engine (fan-out and dispatcher) of the process. */
export interface WebhooksServer extends RpcServer {
  /** Undefined when started with `delivery: false`. */
  delivery?: WebhookDelivery;
  topology: Topology;
}

export interface ServeWebhooksOptions extends ServeOptions {
  /** Start the delivery engine (default true); API tests that send nothing turn it off. */
  delivery?: boolean;
}

/**
 * WebhookService always enforces identity (subscriptions are admin-only: their secrets sign what
 * receivers trust), and runs the delivery engine beside it: every replica fans events out and
 * dispatches (a durable consumer, SKIP LOCKED claims). close() stops the server, then the engine
 * (its attempts in flight recorded).
 */
export async function serveWebhooks(infra: Infra, port = infra.config.ports.webhooks, options: ServeWebhooksOptions = {}): Promise<WebhooksServer> {
  const { config } = infra;
  const policy = { allowHttp: config.webhooks.allowHttp, allowLoopback: config.webhooks.allowLoopback, allowHosts: config.webhooks.allowHosts };
  const { topology } = infra;
  const keyEncryptionKey = await loadKeyEncryptionKey(config.auth.keyEncryptionKey, config.auth.signingKeyDir);
  const domain = createWebhookDomain({
    db: infra.db,
    pageTokens: infra.pageTokens,
    keyEncryptionKey,
    policy,
    testPing: (row) => sendTestPing({ name: `webhooks/${row.id}`, url: row.url, secrets: signingSecretsOf(keyEncryptionKey, row) }, { policy, timeoutMs: config.webhooks.timeoutMs }),
  });
  // An automatic disable (410 Gone, days of failures) is recorded in the audit log, as a call would be.
  const sink = config.audit.enabled ? await infra.auditSink() : undefined;
  const delivery = options.delivery === false ? undefined : await startWebhookDelivery({
    db: infra.db,
    js: infra.bus.js,
    topology,
    log: infra.log,
    config: config.webhooks,
    keyEncryptionKey,
    publicUrl: config.webhooks.publicUrl,
    record: sink ? (event) => sink.record(event) : undefined,
  });
  let server: RpcServer;
  try {
    server = await serveService(infra, { name: "webhooks", port, service: WebhookService, implementation: createWebhookService(domain), mode: "enforce", options });
  } catch (error) {
    await delivery?.stop();
    throw error;
  }
  return {
    ...server,
    delivery,
    topology,
    async close() {
      await server.close();
      await delivery?.stop();
    },
  };
}

/**
 * The bootstrap tenant's first admin (JOBMESH_ADMIN_EMAIL / JOBMESH_ADMIN_PASSWORD). When this
 * call generated the password it is returned once, to print; it is not logged.
 */
export function ensureBootstrapAdmin(infra: Infra): Promise<BootstrapAdmin> {
  const { adminEmail, adminPassword } = infra.config.auth;
  return ensureAdmin({ db: infra.db, pageTokens: infra.pageTokens }, infra.bootstrapTenantId, adminEmail, adminPassword);
}

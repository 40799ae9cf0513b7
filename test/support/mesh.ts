/**
 * Starts jobmesh services in the test process, against real Postgres, NATS and Redis, in an
 * isolated database and namespace.
 */
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace";
import { createInfra, type Infra } from "../../internal/mesh/infra.ts";
import { removeTopology } from "../../internal/bus/topology.ts";
import { defaultIdentityMode, serveAudit, serveAuth, serveJobs, servePipelines, serveWebhooks, startWorkers, type AuditServer, type JobsServer, type WebhooksServer } from "../../internal/mesh/servers.ts";
import type { DestinationStream } from "pino";
import { createTestAuth, type TestAuth } from "./auth.ts";
import type { Worker } from "../../internal/worker/worker.ts";
import type { RpcServer } from "../../internal/rpc/server.ts";
import { createLogger, startTelemetry, type Telemetry } from "../../internal/telemetry/index.ts";
import { isolate, type Isolated } from "./isolation.ts";

export interface TestMesh {
  isolated: Isolated;
  infra: Infra;
  pipelines: RpcServer;
  spans: InMemorySpanExporter;
  telemetry: Telemetry;
  /** Set with `{ jobs: true }`. */
  jobs?: JobsServer;
  /** In-process stage workers, set with `{ jobs: true }` unless `workers: 0`. */
  workers: Worker[];
  /** Set with `{ auth: true }`: AuthService, and every served service enforcing identity. */
  auth?: TestAuth;
  /** Set with `{ audit: true }`: AuditService and the audit store (admin-only, so with auth). */
  audit?: AuditServer;
  /** Set with `{ webhooks: true }`: WebhookService (admin-only, so with auth) and, unless `webhookDelivery: false`, the delivery engine. */
  webhooks?: WebhooksServer;
  close(): Promise<void>;
}

export interface TestMeshOptions {
  /** Also serve JobService (with its relay and reaper) and start stage workers. */
  jobs?: boolean;
  /** In-process worker instances to start with jobs (default 1); 0 for none. */
  workers?: number;
  /** Start the outbox relay with JobService (default true). */
  relay?: boolean;
  /** Serve AuthService and make every served service require credentials (see test/support/auth.ts); defaults to whether services enforce by default. */
  auth?: boolean;
  /** Also serve AuditService with the audit store (the consumer that chains and stores events). */
  audit?: boolean;
  /** Also serve WebhookService with the delivery engine. */
  webhooks?: boolean;
  /** Start the webhook delivery engine with WebhookService (default true); API tests that send nothing turn it off. */
  webhookDelivery?: boolean;
  /** Where the mesh's logs go (e.g. a stream a test reads), at `logLevel`. */
  logDestination?: DestinationStream;
  logLevel?: string;
  /**
   * Keep every finished span in `spans` (default true). The bench turns it off: spans are still
   * made, as in a process without an exporter, but not stored.
   */
  recordSpans?: boolean;
}

export async function startTestMesh(overrides: Record<string, string> = {}, options: TestMeshOptions = {}): Promise<TestMesh> {
  const isolated = await isolate(overrides);
  const spans = new InMemorySpanExporter();
  const telemetry = startTelemetry({ serviceName: "jobmesh-test", spanProcessors: options.recordSpans === false ? [] : [new SimpleSpanProcessor({ exporter: spans })] });
  const log = createLogger({ name: "test", level: options.logLevel ?? isolated.config.logLevel, destination: options.logDestination });
  const infra = await createInfra(isolated.config, log, telemetry, "test");
  // Once services enforce identity by default, every test mesh needs AuthService to sign in.
  const withAuth = options.auth ?? defaultIdentityMode === "enforce";
  const identityMode = withAuth ? "enforce" : undefined;
  const pipelines = await servePipelines(infra, 0, identityMode);
  const jobs = options.jobs ? await serveJobs(infra, 0, { relay: options.relay, identityMode }) : undefined;
  const authServer = withAuth ? await serveAuth(infra, 0) : undefined;
  const auth = authServer ? await createTestAuth(infra, authServer) : undefined;
  const audit = options.audit ? await serveAudit(infra, 0) : undefined;
  const webhooks = options.webhooks ? await serveWebhooks(infra, 0, { delivery: options.webhookDelivery }) : undefined;
  const workers: Worker[] = [];
  for (let i = 0; options.jobs && i < (options.workers ?? 1); i++) workers.push(await startWorkers(infra));
  return {
    isolated,
    infra,
    pipelines,
    spans,
    telemetry,
    jobs,
    workers,
    auth,
    audit,
    webhooks,
    async close() {
      await authServer?.close();
      await webhooks?.close();
      await Promise.all(workers.map((w) => w.stop(1000)));
      await jobs?.close();
      await pipelines.close();
      await audit?.close();
      // Every event the servers recorded reaches the stream first.
      if (isolated.config.audit.enabled) await (await infra.auditSink()).flush();
      // createInfra provisioned the whole topology: every stream, bucket and consumer goes.
      await removeTopology(infra.topology, infra.bus.jsm);
      await infra.cache.redis.eval("for _, k in ipairs(redis.call('keys', ARGV[1])) do redis.call('del', k) end", 0, `${isolated.namespace}:*`).catch(() => {});
      await infra.close();
      await telemetry.shutdown();
      await isolated.drop();
    },
  };
}

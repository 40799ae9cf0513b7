/**
 * The shared dependencies every service process builds the same way: Postgres (migrated), the
 * Redis cache, NATS with the whole bus topology provisioned, the bootstrap tenant, and the
 * readiness checks over all three.
 */
import { createValidator } from "@bufbuild/protovalidate";
import { join } from "node:path";
import { createAuditSink, type AuditSink } from "../audit/sink.ts";
import { connectBus, type Bus } from "../bus/index.ts";
import { createTopology, provisionTopology, type Topology } from "../bus/topology.ts";
import { createCache, type Cache } from "../cache/index.ts";
import type { Config } from "../config/index.ts";
import { createPool, ensureTenant, migrate, pingDb, readSetting, type Pool } from "../db/index.ts";
import { createPageTokens, type PageTokens } from "../paging/index.ts";
import type { ReadinessChecks } from "../rpc/readiness.ts";
import type { Logger, Telemetry } from "../telemetry/index.ts";

export interface Infra {
  config: Config;
  log: Logger;
  telemetry: Telemetry;
  db: Pool;
  cache: Cache;
  bus: Bus;
  /** Every stream, bucket and durable consumer of the namespace, provisioned by createInfra. */
  topology: Topology;
  pageTokens: PageTokens;
  validator: ReturnType<typeof createValidator>;
  /** Id of the bootstrap tenant (the caller's tenant until identity lands). */
  bootstrapTenantId: string;
  readiness: ReadinessChecks;
  /**
   * The process's one audit sink, made on first use: every server of the process records into
   * it. Spools to `<JOBMESH_AUDIT_SPOOL_DIR>/<process name>.spool` while NATS is away.
   */
  auditSink(): Promise<AuditSink>;
  /** Flushes and closes the audit sink (if made), then closes the bus, cache and pool. */
  close(): Promise<void>;
}

export async function createInfra(config: Config, log: Logger, telemetry: Telemetry, processName: string): Promise<Infra> {
  await migrate(config.databaseUrl, log);
  const db = createPool({ url: config.databaseUrl, applicationName: `jobmesh-${processName}` });
  const cache = createCache({ url: config.redisUrl, prefix: config.namespace, meter: telemetry.meter, log });
  const bus = await connectBus({ url: config.natsUrl, name: `jobmesh-${processName}`, log });
  const topology = createTopology(config.namespace, {
    maxStageLosses: config.maxStageLosses,
    storageLimits: { streamMaxBytes: config.streamMaxBytes, bucketMaxBytes: config.bucketMaxBytes, checkpointStreamMaxBytes: config.audit.checkpointStreamMaxBytes },
  });
  // Every process provisions everything: none waits for the one that used to create a stream.
  await provisionTopology(topology, bus.jsm);
  const bootstrapTenantId = await ensureTenant(db, config.bootstrapTenant);
  const pageTokens = createPageTokens(await readSetting(db, "page_token_secret"));
  let auditSink: Promise<AuditSink> | undefined;
  return {
    config,
    log,
    telemetry,
    db,
    cache,
    bus,
    topology,
    pageTokens,
    validator: createValidator(),
    bootstrapTenantId,
    readiness: { postgres: () => pingDb(db), nats: () => bus.ping(), redis: () => cache.ping() },
    auditSink() {
      if (!auditSink) {
        const made = createAuditSink({ nc: bus.nc, js: bus.js, topology: topology.audit, spoolFile: join(config.audit.spoolDir, `${processName}.spool`), log });
        auditSink = made;
        // A failed start is not kept: the next server to ask tries again.
        made.catch(() => {
          if (auditSink === made) auditSink = undefined;
        });
      }
      return auditSink;
    },
    async close() {
      // Before the bus: what the sink holds is published (or spooled) while NATS is still there.
      const sink = await auditSink?.catch(() => undefined);
      if (sink) {
        await sink.flush().catch((error: unknown) => log.warn({ err: error }, "audit sink flush failed at close; events stay spooled"));
        await sink.close().catch((error: unknown) => log.warn({ err: error }, "audit sink close failed"));
      }
      await Promise.allSettled([bus.close(), cache.close(), db.end()]);
    },
  };
}

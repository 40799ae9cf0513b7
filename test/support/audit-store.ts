/**
 * The audit store's world for its tests: an isolated database (migrated) and namespace, the
 * audit streams, events published the way services publish them (the real sink), the store
 * (in this process, or as a child process that a test can SIGKILL) and the domain over it.
 */
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { AuditEventSchema, type AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import { PrincipalKind } from "../../gen/jobmesh/v1/auth_pb.js";
import { createAuditDomain, type AuditDomain } from "../../internal/audit/domain.ts";
import { startAuditStore, type AuditStore } from "../../internal/audit/consumer.ts";
import { appendAuditEventRows, type AuditEventRow } from "../../internal/audit/rows.ts";
import { createAuditSink, type AuditSink } from "../../internal/audit/sink.ts";
import { createAuditTopology, provisionAuditTopology, type AuditTopology } from "../../internal/bus/topology.ts";
import { connectBus, type Bus } from "../../internal/bus/index.ts";
import { createPool, migrate, type Pool, type Queryable } from "../../internal/db/index.ts";
import { createPageTokens } from "../../internal/paging/index.ts";
import { createLogger, type Logger } from "../../internal/telemetry/index.ts";
import { isolate, type Isolated } from "./isolation.ts";

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface AuditStoreWorld {
  isolated: Isolated;
  db: Pool;
  bus: Bus;
  log: Logger;
  topology: AuditTopology;
  keyEncryptionKey: Buffer;
  unattributedTenantId: string;
  sink: AuditSink;
  domain: AuditDomain;
  /** Starts a store in this process (stopped at teardown). */
  startStore(options?: { batchSize?: number; checkpointIntervalMs?: number }): Promise<AuditStore>;
  /** Starts a store as a child process named `name` in Postgres (SIGKILLed at teardown if still running). */
  startStoreProcess(name: string, options?: { batchSize?: number }): ChildProcess;
  /** The application_name of the process holding the store lock, if any. */
  lockHolder(): Promise<string | undefined>;
  /** Rows in audit_events. */
  count(tenantId?: string): Promise<number>;
  /** Polls until `check` holds; fails with `what` after `timeoutMs`. */
  until(what: string, check: () => Promise<boolean>, timeoutMs?: number): Promise<void>;
}

/** An event as a service records it: ms event_time, µs duration, sequence and hashes empty. */
export function auditEvent(tenant: string, fields: Partial<{ action: string; subject: string; code: number; resource: string; time: Date; request: string }> = {}): AuditEvent {
  return create(AuditEventSchema, {
    name: `auditEvents/${randomUUID()}`,
    tenant,
    actor: { subject: fields.subject ?? "users/alice", kind: fields.subject === "" ? PrincipalKind.UNSPECIFIED : PrincipalKind.USER, roles: ["admin", "viewer"], credentialHint: "tokens/abc" },
    action: fields.action ?? "jobmesh.v1.JobService.CreateJob",
    resource: fields.resource ?? "jobs/j1",
    resourceType: "jobmesh.dev/Job",
    outcome: { code: fields.code ?? 0, message: fields.code ? "refused" : "" },
    requestId: randomUUID(),
    traceId: randomBytes(16).toString("hex"),
    eventTime: timestampFromDate(fields.time ?? new Date()),
    clientAddress: "127.0.0.1",
    userAgent: "connect-es/2.2 (test) ✓",
    duration: durationFromMs(1.234),
    request: fields.request ?? '{"job":{"labels":{"k":"v"}}}',
    recorder: "jobs",
  });
}

/**
 * Inserts chained rows a test built by hand, as the store would (their ids recorded), without
 * moving any chain head: the store's path, kept out of the store's module since only tests need it.
 */
export async function insertAuditEventRows(db: Queryable, rows: AuditEventRow[]): Promise<void> {
  await appendAuditEventRows(db, rows, []);
}

const childScript = join(import.meta.dirname, "audit-store-child.ts");

export async function createAuditStoreWorld(t: Teardown): Promise<AuditStoreWorld> {
  const isolated = await isolate();
  const log = createLogger({ name: "audit-store-test", level: "warn" });
  await migrate(isolated.databaseUrl, log);
  const db = createPool({ url: isolated.databaseUrl });
  const bus = await connectBus({ url: isolated.config.natsUrl, name: "audit-store-test", log });
  const topology = createAuditTopology(isolated.namespace);
  await provisionAuditTopology(topology, bus.jsm, { streamMaxBytes: 64 * 1024 * 1024 });
  const keyEncryptionKey = randomBytes(32);
  const unattributedTenantId = randomUUID();
  const spoolFile = join(isolated.config.audit.spoolDir, "test.spool");
  const sink = await createAuditSink({ nc: bus.nc, js: bus.js, topology, spoolFile, log });
  const domain = createAuditDomain({ db, js: bus.js, jsm: bus.jsm, topology, pageTokens: createPageTokens("test"), keyEncryptionKey, log });
  const stores: AuditStore[] = [];
  t.teardown(async () => {
    await Promise.all(stores.map((s) => s.stop()));
    await sink.close();
    await bus.jsm.streams.delete(topology.eventsStream).catch(() => false);
    await bus.jsm.streams.delete(topology.checkpointsStream).catch(() => false);
    await bus.jsm.streams.delete(topology.headsStream).catch(() => false);
    await bus.close();
    await db.end();
    await isolated.drop();
    await rm(isolated.config.audit.spoolDir, { recursive: true, force: true });
  });
  const settings = { checkpointIntervalMs: 500, retentionDays: 0 };
  return {
    isolated, db, bus, log, topology, keyEncryptionKey, unattributedTenantId, sink, domain,
    async startStore(options = {}) {
      const store = await startAuditStore({ db, js: bus.js, jsm: bus.jsm, topology, keyEncryptionKey, log, unattributedTenantId, ...settings, ...options });
      stores.push(store);
      return store;
    },
    startStoreProcess(name, options = {}) {
      const config = {
        name,
        databaseUrl: isolated.databaseUrl, natsUrl: isolated.config.natsUrl, namespace: isolated.namespace,
        keyEncryptionKey: keyEncryptionKey.toString("base64"), unattributedTenantId, ...settings, ...options,
      };
      const child = spawn(process.execPath, [childScript, JSON.stringify(config)], { stdio: ["ignore", "ignore", "inherit"] });
      t.teardown(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      });
      return child;
    },
    async lockHolder() {
      const { rows } = await db.query<{ name: string }>(
        `SELECT a.application_name AS name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.objid::text::bigint = (hashtext('jobmesh.audit_store')::bigint & 4294967295)`,
      );
      return rows[0]?.name;
    },
    async count(tenantId) {
      const { rows } = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM audit_events WHERE $1::uuid IS NULL OR tenant_id = $1", [tenantId ?? null]);
      return rows[0].n;
    },
    async until(what, check, timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      while (!(await check())) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    },
  };
}

/**
 * The audit store alone in a process, for the test that SIGKILLs it mid-stream. Its settings come
 * as one JSON argument (see startStoreProcess in audit-store.ts); SIGTERM stops it cleanly.
 */
import { startAuditStore } from "../../internal/audit/consumer.ts";
import { createAuditTopology } from "../../internal/bus/topology.ts";
import { connectBus } from "../../internal/bus/index.ts";
import { createPool } from "../../internal/db/index.ts";
import { createLogger } from "../../internal/telemetry/index.ts";

const config = JSON.parse(process.argv[2]) as {
  databaseUrl: string;
  natsUrl: string;
  namespace: string;
  keyEncryptionKey: string;
  unattributedTenantId: string;
  checkpointIntervalMs: number;
  retentionDays: number;
  batchSize?: number;
  /** The Postgres application_name, so a test can see which process holds the store lock. */
  name: string;
};
const log = createLogger({ name: "audit-store-child", level: "warn" });
const db = createPool({ url: config.databaseUrl, applicationName: config.name });
const bus = await connectBus({ url: config.natsUrl, name: "audit-store-child", log });
const store = await startAuditStore({
  db,
  js: bus.js,
  jsm: bus.jsm,
  topology: createAuditTopology(config.namespace),
  keyEncryptionKey: Buffer.from(config.keyEncryptionKey, "base64"),
  log,
  unattributedTenantId: config.unattributedTenantId,
  checkpointIntervalMs: config.checkpointIntervalMs,
  retentionDays: config.retentionDays,
  batchSize: config.batchSize,
});
process.once("SIGTERM", () => {
  void (async () => {
    await store.stop();
    await bus.close();
    await db.end();
    process.exit(0);
  })();
});

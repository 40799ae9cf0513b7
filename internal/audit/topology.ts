/**
 * The audit log's names on the bus: the stream every process publishes audit events to, the
 * stream of signed checkpoints (kept apart, with its own retention, so that a rewrite of the
 * chain in Postgres no longer matches what was published), and the audit consumer. Every name
 * starts with the namespace, as in jobs/topology.ts.
 */
import { AckPolicy, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType, type JetStreamManager } from "@nats-io/jetstream";
import { ensureStream } from "../bus/index.ts";

export interface AuditTopology {
  namespace: string;
  /** `<ns>_audit`: every audit event, as the AuditEvent protobuf, Nats-Msg-Id = event id. */
  eventsStream: string;
  /** `<ns>.audit.events.<tenant>`; `_` for an event whose tenant is not known (stored in the unattributed chain). */
  eventsSubject(tenantId: string): string;
  /** `<ns>_audit_checkpoints`: every signed AuditCheckpoint, Nats-Msg-Id = `<tenant>:<sequence>`. */
  checkpointsStream: string;
  /** `<ns>.audit.checkpoints.<tenant>` */
  checkpointsSubject(tenantId: string): string;
  /**
   * `<ns>_audit_heads`: each tenant's latest signed checkpoint, one message per subject, never
   * evicted by age or size: the permanent outside anchor (O(tenants)) when the checkpoints stream
   * has let old checkpoints go.
   */
  headsStream: string;
  /** `<ns>.audit.heads.<tenant>` */
  headsSubject(tenantId: string): string;
  /** The durable consumer that stores events in Postgres (cmd/audit). */
  storeConsumer: string;
}

/** The tenant token of an event recorded before its tenant was known (a bad credential). */
export const unattributedToken = "_";

export function createAuditTopology(namespace: string): AuditTopology {
  return {
    namespace,
    eventsStream: `${namespace}_audit`,
    eventsSubject: (tenantId) => `${namespace}.audit.events.${tenantId || unattributedToken}`,
    checkpointsStream: `${namespace}_audit_checkpoints`,
    checkpointsSubject: (tenantId) => `${namespace}.audit.checkpoints.${tenantId}`,
    headsStream: `${namespace}_audit_heads`,
    headsSubject: (tenantId) => `${namespace}.audit.heads.${tenantId}`,
    storeConsumer: "audit_store",
  };
}

const day = 86_400 * 1_000_000_000;

export interface AuditStreamLimits {
  /** max_bytes of the events stream (JOBMESH_STREAM_MAX_BYTES); 0 means no limit. */
  streamMaxBytes: number;
  /**
   * max_bytes of the checkpoints stream (JOBMESH_AUDIT_CHECKPOINT_STREAM_MAX_BYTES); 0 means no
   * limit (its 400 days bound it). Not given: no limit. The heads stream has none.
   */
  checkpointStreamMaxBytes?: number;
}

/**
 * Creates (or updates) both streams and the store consumer. Idempotent: every process that
 * records audit events calls it at start, so a publish never lands on a missing stream.
 */
export async function provisionAuditTopology(topology: AuditTopology, jsm: JetStreamManager, limits: AuditStreamLimits): Promise<void> {
  const ns = topology.namespace;
  const maxBytes = limits.streamMaxBytes > 0 ? limits.streamMaxBytes : -1;
  const checkpointMaxBytes = (limits.checkpointStreamMaxBytes ?? 0) > 0 ? limits.checkpointStreamMaxBytes! : -1;
  await ensureStream(jsm, {
    name: topology.eventsStream,
    subjects: [`${ns}.audit.events.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    // Full, it refuses new events (publishers spool them to disk and retry) rather than drop
    // events the store consumer has not read yet.
    max_bytes: maxBytes,
    discard: DiscardPolicy.New,
    // Stored events are in Postgres; the stream keeps a week for replay and outside comparison.
    max_age: 7 * day,
    // Nats-Msg-Id de-duplication covers a publisher that retries after a lost acknowledgement.
    duplicate_window: 2 * 60 * 1_000_000_000,
  });
  await ensureStream(jsm, {
    name: topology.checkpointsStream,
    subjects: [`${ns}.audit.checkpoints.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    // Its own size: at ~32 bytes per event, the events stream's limit would keep hours, not days.
    max_bytes: checkpointMaxBytes,
    discard: DiscardPolicy.Old,
    // Checkpoints are the outside anchor of the chain: kept as long as the events' retention.
    max_age: 400 * day,
    duplicate_window: 2 * 60 * 1_000_000_000,
  });
  await ensureStream(jsm, {
    name: topology.headsStream,
    subjects: [`${ns}.audit.heads.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    // One message per tenant (its latest checkpoint replaces the previous), no age or size
    // eviction: whatever happens to the checkpoints stream, the signed end of each chain stays.
    max_msgs_per_subject: 1,
    max_bytes: -1,
    max_age: 0,
    discard: DiscardPolicy.Old,
    duplicate_window: 2 * 60 * 1_000_000_000,
  });
  const consumer = {
    durable_name: topology.storeConsumer,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: 30_000 * 1_000_000,
    max_ack_pending: 20_000,
  };
  try {
    await jsm.consumers.info(topology.eventsStream, topology.storeConsumer);
  } catch {
    await jsm.consumers.add(topology.eventsStream, consumer);
  }
}

/** Deletes the audit streams (the events, the checkpoints and the heads): a test namespace's cleanup. */
export async function removeAuditTopology(topology: AuditTopology, jsm: JetStreamManager): Promise<void> {
  for (const name of [topology.eventsStream, topology.checkpointsStream, topology.headsStream]) await jsm.streams.delete(name).catch(() => false);
}

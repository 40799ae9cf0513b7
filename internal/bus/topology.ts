/**
 * The mesh's names on the bus, spelled in one place, and their provisioning: the work and events
 * streams (jobs), the audit streams (events, checkpoints, heads), every durable consumer (the
 * work consumers, the audit store's, the webhooks fan-out's), the object store buckets and the
 * cancel signal subject; and the loss limit every process that commits stage attempts shares.
 * Every process provisions all of it at start (internal/mesh/infra.ts), so none depends on
 * another having run first. Every name starts with the namespace, so deployments and test runs
 * can share one NATS server.
 */
import { AckPolicy, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType, type ConsumerConfig, type JetStreamManager, type StreamConfig } from "@nats-io/jetstream";
import { Objm, type ObjectStore } from "@nats-io/obj";
import type { JetStreamClient } from "@nats-io/jetstream";
// The Deno gateway imports this module (for the audit streams' names): it needs the .d.ts named.
// @deno-types="../../gen/jobmesh/v1/events_pb.d.ts"
import { JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
// @deno-types="../../gen/jobmesh/v1/jobs_pb.d.ts"
import { Priority } from "../../gen/jobmesh/v1/jobs_pb.js";
// @deno-types="../../gen/jobmesh/v1/pipelines_pb.d.ts"
import { Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import { ensureStream } from "./index.ts";

/**
 * How many times one stage of a job may lose its worker before the job fails, unless
 * JOBMESH_MAX_STAGE_LOSSES says otherwise. Here, not in jobs/stage-policy.ts (which re-exports
 * it), so that this module stays free of the jobs' database code: the gateway imports it.
 */
export const maxStageLossesDefault = 3;

/** Priorities in the order workers serve them. */
export const prioritiesInOrder = [Priority.HIGH, Priority.NORMAL, Priority.LOW] as const;

/** "ingest", "detect", ... as used in subjects and span names. */
export const stageToken = (stage: Stage): string => (Stage[stage] ?? "unspecified").toLowerCase();
/** "high", "normal", "low". */
export const priorityToken = (priority: Priority): string => (Priority[priority] ?? "normal").toLowerCase();
/** "job_created", "stage_started", ...: the JobEventType name without its prefix, lower-cased. */
export const eventTypeToken = (type: JobEventType): string => (JobEventType[type] ?? "unspecified").toLowerCase();

/** How long a worker may hold a task without extending its ack deadline. */
export const workAckWaitMs = 30_000;

export interface Topology {
  namespace: string;
  workStream: string;
  eventsStream: string;
  uploadsBucket: string;
  resultsBucket: string;
  /** `<ns>.work.<stage>.<priority>` */
  workSubject(stage: Stage, priority: Priority): string;
  /** `<ns>.events.<tenant>.<type>` */
  eventSubject(tenantId: string, type: JobEventType): string;
  /** Every event of a tenant. */
  tenantEventsSubject(tenantId: string): string;
  /** Core NATS subject that tells workers to abort a job's running stage now. */
  cancelSubject(jobId: string): string;
  /** Durable work consumer of one priority (its filter covers every stage). */
  workConsumer(priority: Priority): string;
  /**
   * How many times one stage of a job may lose its worker before the job fails
   * (JOBMESH_MAX_STAGE_LOSSES). Here because every process that commits a stage attempt (the
   * workers, and the jobs process's reaper) must agree on it, as on the names above.
   */
  maxStageLosses: number;
  /**
   * max_bytes of the streams and of the buckets (0: no limit), applied by provisionTopology and
   * openBuckets; undefined leaves existing streams as they are (a test's or a tool's topology).
   */
  storageLimits?: StorageLimits;
  /** The audit log's streams and its store consumer. */
  audit: AuditTopology;
  /** The durable consumer on the events stream that fans events out to webhook deliveries (cmd/webhooks). */
  webhooksFanoutConsumer: string;
}

export interface StorageLimits {
  /** The work, events and audit events streams (JOBMESH_STREAM_MAX_BYTES). */
  streamMaxBytes: number;
  /** The uploads and results buckets (JOBMESH_BUCKET_MAX_BYTES). */
  bucketMaxBytes: number;
  /**
   * The audit checkpoints stream (JOBMESH_AUDIT_CHECKPOINT_STREAM_MAX_BYTES); 0 or not given: no
   * limit (its 400 days bound it). The audit heads stream has none.
   */
  checkpointStreamMaxBytes?: number;
}

/** Every name of `namespace`; the limits are applied by provisionTopology. */
export function createTopology(namespace: string, options: { maxStageLosses?: number; storageLimits?: StorageLimits } = {}): Topology {
  return {
    namespace,
    audit: createAuditTopology(namespace),
    webhooksFanoutConsumer: "webhooks_fanout",
    storageLimits: options.storageLimits,
    maxStageLosses: options.maxStageLosses ?? maxStageLossesDefault,
    workStream: `${namespace}_work`,
    eventsStream: `${namespace}_events`,
    uploadsBucket: `${namespace}_uploads`,
    resultsBucket: `${namespace}_results`,
    workSubject: (stage, priority) => `${namespace}.work.${stageToken(stage)}.${priorityToken(priority)}`,
    eventSubject: (tenantId, type) => `${namespace}.events.${tenantId}.${eventTypeToken(type)}`,
    tenantEventsSubject: (tenantId) => `${namespace}.events.${tenantId}.>`,
    cancelSubject: (jobId) => `${namespace}.cancel.${jobId}`,
    workConsumer: (priority) => `work_${priorityToken(priority)}`,
  };
}

/**
 * Creates (or updates) every stream, durable consumer and bucket of the topology. Idempotent:
 * every process calls it at start (createInfra), so a publish never lands on a missing stream and
 * a consumer never waits for the process that used to create it.
 */
export async function provisionTopology(topology: Topology, jsm: JetStreamManager): Promise<void> {
  await provisionJobStreams(topology, jsm);
  const limits = topology.storageLimits;
  await provisionAuditTopology(topology.audit, jsm, limits && { streamMaxBytes: limits.streamMaxBytes, checkpointStreamMaxBytes: limits.checkpointStreamMaxBytes });
  await ensureConsumer(jsm, topology.eventsStream, {
    durable_name: topology.webhooksFanoutConsumer,
    ack_policy: AckPolicy.Explicit,
    // From the start of the stream: events published before the first webhooks process ran are
    // still fanned out (to subscriptions older than them; webhooks/fanout.ts matchesEvent).
    deliver_policy: DeliverPolicy.All,
    filter_subject: `${topology.namespace}.events.>`,
    ack_wait: 30_000 * 1_000_000,
    max_ack_pending: 20_000,
  });
  await openBuckets(topology, jsm.jetstream());
}

/**
 * Creates the durable consumer when missing (an existing one is left as it is: its position is
 * the point). Two processes starting at once may both try: the loser finds the winner's.
 */
async function ensureConsumer(jsm: JetStreamManager, stream: string, config: Partial<ConsumerConfig> & { durable_name: string }): Promise<void> {
  try {
    await jsm.consumers.info(stream, config.durable_name);
  } catch {
    await jsm.consumers.add(stream, config).catch(async (error: unknown) => {
      await jsm.consumers.info(stream, config.durable_name).catch(() => Promise.reject(error));
    });
  }
}

/** The work and events streams and the work consumers. */
async function provisionJobStreams(topology: Topology, jsm: JetStreamManager): Promise<void> {
  const ns = topology.namespace;
  const limits = topology.storageLimits;
  await ensureLimitedStream(jsm, limits && "JOBMESH_STREAM_MAX_BYTES", {
    name: topology.workStream,
    subjects: [`${ns}.work.>`],
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    // Full, the stream refuses new tasks (the relay keeps them in the outbox and retries)
    // instead of dropping queued ones.
    ...(limits && { max_bytes: maxBytesOf(limits.streamMaxBytes), discard: DiscardPolicy.New }),
    // Nats-Msg-Id de-duplication covers a relay that dies between publish and marking the row.
    duplicate_window: 2 * 60 * 1_000_000_000,
  });
  await ensureLimitedStream(jsm, limits && "JOBMESH_STREAM_MAX_BYTES", {
    name: topology.eventsStream,
    subjects: [`${ns}.events.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    // Full, the oldest events go first: it is a history, and Postgres keeps every job's events.
    ...(limits && { max_bytes: maxBytesOf(limits.streamMaxBytes) }),
    max_age: 7 * 86_400 * 1_000_000_000,
    duplicate_window: 2 * 60 * 1_000_000_000,
  });
  for (const priority of prioritiesInOrder) {
    const name = topology.workConsumer(priority);
    const config = {
      durable_name: name,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      // One consumer per priority over every stage: work-queue streams need disjoint filters.
      filter_subject: `${ns}.work.*.${priorityToken(priority)}`,
      ack_wait: workAckWaitMs * 1_000_000,
      max_ack_pending: 10_000,
    };
    await ensureConsumer(jsm, topology.workStream, config);
  }
}

/** JetStream's "no limit". */
const maxBytesOf = (bytes: number) => (bytes > 0 ? bytes : -1);

/**
 * ensureStream, with JetStream's refusal to reserve max_bytes (it reserves each stream's limit
 * against the server's storage) explained by the variable that set it.
 */
async function ensureLimitedStream(jsm: JetStreamManager, variable: string | undefined, config: Partial<StreamConfig> & { name: string }): Promise<void> {
  try {
    await ensureStream(jsm, config);
  } catch (error) {
    throw explainStorage(error, variable, config.name, config.max_bytes);
  }
}

function explainStorage(error: unknown, variable: string | undefined, name: string, maxBytes: number | undefined): unknown {
  if (!variable || !(error instanceof Error) || !/insufficient (storage )?resources/i.test(error.message)) return error;
  return new Error(`JetStream cannot reserve max_bytes ${maxBytes} for ${name}: the server has less storage left; lower ${variable} (0: no limit)`, { cause: error });
}

/** The object store buckets, created when missing, with max_bytes when the topology has limits. */
export async function openBuckets(topology: Topology, js: JetStreamClient): Promise<{ uploads: ObjectStore; results: ObjectStore }> {
  const objm = new Objm(js);
  const limits = topology.storageLimits;
  const options = { storage: StorageType.File, ...(limits && { max_bytes: maxBytesOf(limits.bucketMaxBytes) }) };
  const open = async (bucket: string) => {
    try {
      const store = await objm.create(bucket, options);
      // create() leaves an existing bucket's stream as it was: bring its limit up to date.
      if (limits) {
        const jsm = await js.jetstreamManager();
        const { config } = await jsm.streams.info(`OBJ_${bucket}`);
        if (config.max_bytes !== options.max_bytes) await jsm.streams.update(config.name, { ...config, max_bytes: options.max_bytes });
      }
      return store;
    } catch (error) {
      throw explainStorage(error, limits && "JOBMESH_BUCKET_MAX_BYTES", `OBJ_${bucket}`, options.max_bytes);
    }
  };
  const [uploads, results] = await Promise.all([open(topology.uploadsBucket), open(topology.resultsBucket)]);
  return { uploads, results };
}

/** Deletes every stream and bucket of the namespace, and so every consumer (tests clean up with it). */
export async function removeTopology(topology: Topology, jsm: JetStreamManager): Promise<void> {
  for (const name of [topology.workStream, topology.eventsStream, `OBJ_${topology.uploadsBucket}`, `OBJ_${topology.resultsBucket}`]) {
    await jsm.streams.delete(name).catch(() => false);
  }
  await removeAuditTopology(topology.audit, jsm);
}

/**
 * The audit log's names: the stream every process publishes audit events to, the stream of signed
 * checkpoints (kept apart, with its own retention, so that a rewrite of the chain in Postgres no
 * longer matches what was published), the heads stream and the audit store's consumer.
 */
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

/** The audit names of `namespace` (also part of createTopology's). */
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
 * Creates (or updates) the three audit streams and the store consumer: provisionTopology's audit
 * part, on its own for tools and tests that need only the audit log. Idempotent. Without limits,
 * existing streams keep their max_bytes (a new one has none).
 */
export async function provisionAuditTopology(topology: AuditTopology, jsm: JetStreamManager, limits?: AuditStreamLimits): Promise<void> {
  const ns = topology.namespace;
  const maxBytes = limits && { max_bytes: maxBytesOf(limits.streamMaxBytes) };
  const checkpointMaxBytes = limits && { max_bytes: maxBytesOf(limits.checkpointStreamMaxBytes ?? 0) };
  await ensureStream(jsm, {
    name: topology.eventsStream,
    subjects: [`${ns}.audit.events.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    // Full, it refuses new events (publishers spool them to disk and retry) rather than drop
    // events the store consumer has not read yet.
    ...maxBytes,
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
    ...checkpointMaxBytes,
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
  await ensureConsumer(jsm, topology.eventsStream, {
    durable_name: topology.storeConsumer,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: 30_000 * 1_000_000,
    max_ack_pending: 20_000,
  });
}

/** Deletes the audit streams (the events, the checkpoints and the heads): a test namespace's cleanup. */
export async function removeAuditTopology(topology: AuditTopology, jsm: JetStreamManager): Promise<void> {
  for (const name of [topology.eventsStream, topology.checkpointsStream, topology.headsStream]) await jsm.streams.delete(name).catch(() => false);
}

/**
 * Names on the bus, spelled in one place: the work and events streams, their subjects, the
 * work consumers, the object store buckets and the cancel signal subject; and the loss limit
 * every process that commits stage attempts shares. Every name starts with
 * the namespace, so deployments and test runs can share one NATS server.
 */
import { AckPolicy, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType, type JetStreamManager, type StreamConfig } from "@nats-io/jetstream";
import { Objm, type ObjectStore } from "@nats-io/obj";
import type { JetStreamClient } from "@nats-io/jetstream";
import { JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
import { Priority } from "../../gen/jobmesh/v1/jobs_pb.js";
import { Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import { ensureStream } from "../bus/index.ts";
import { maxStageLossesDefault } from "./stage-policy.ts";

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
}

export interface StorageLimits {
  /** The work and events streams (JOBMESH_STREAM_MAX_BYTES). */
  streamMaxBytes: number;
  /** The uploads and results buckets (JOBMESH_BUCKET_MAX_BYTES). */
  bucketMaxBytes: number;
}

export function createTopology(namespace: string, options: { maxStageLosses?: number; storageLimits?: StorageLimits } = {}): Topology {
  return {
    namespace,
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
 * Creates (or updates) the streams, the work consumers and the buckets. Idempotent: every
 * process calls it at start.
 */
export async function provisionTopology(topology: Topology, jsm: JetStreamManager): Promise<void> {
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
    try {
      await jsm.consumers.info(topology.workStream, name);
    } catch {
      await jsm.consumers.add(topology.workStream, config);
    }
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

/** Deletes every stream and bucket of the namespace (tests clean up with it). */
export async function removeTopology(topology: Topology, jsm: JetStreamManager): Promise<void> {
  for (const name of [topology.workStream, topology.eventsStream, `OBJ_${topology.uploadsBucket}`, `OBJ_${topology.resultsBucket}`]) {
    await jsm.streams.delete(name).catch(() => false);
  }
}

/**
 * Names on the bus, spelled in one place: the work and events streams, their subjects, the
 * work consumers, the object store buckets and the cancel signal subject; and the loss limit
 * every process that commits stage attempts shares. Every name starts with
 * the namespace, so deployments and test runs can share one NATS server.
 */
import { AckPolicy, DeliverPolicy, RetentionPolicy, StorageType, type JetStreamManager } from "@nats-io/jetstream";
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
}

export function createTopology(namespace: string, options: { maxStageLosses?: number } = {}): Topology {
  return {
    namespace,
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
  await ensureStream(jsm, {
    name: topology.workStream,
    subjects: [`${ns}.work.>`],
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    // Nats-Msg-Id de-duplication covers a relay that dies between publish and marking the row.
    duplicate_window: 2 * 60 * 1_000_000_000,
  });
  await ensureStream(jsm, {
    name: topology.eventsStream,
    subjects: [`${ns}.events.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
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

/** The object store buckets, created when missing. */
export async function openBuckets(topology: Topology, js: JetStreamClient): Promise<{ uploads: ObjectStore; results: ObjectStore }> {
  const objm = new Objm(js);
  const [uploads, results] = await Promise.all([
    objm.create(topology.uploadsBucket, { storage: StorageType.File }),
    objm.create(topology.resultsBucket, { storage: StorageType.File }),
  ]);
  return { uploads, results };
}

/** Deletes every stream and bucket of the namespace (tests clean up with it). */
export async function removeTopology(topology: Topology, jsm: JetStreamManager): Promise<void> {
  for (const name of [topology.workStream, topology.eventsStream, `OBJ_${topology.uploadsBucket}`, `OBJ_${topology.resultsBucket}`]) {
    await jsm.streams.delete(name).catch(() => false);
  }
}

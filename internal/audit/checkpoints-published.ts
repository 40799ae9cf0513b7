/**
 * The audit checkpoints as published outside Postgres: the tenant's checkpoints on the
 * checkpoints stream (read from a start time when one is known), and its head (the latest,
 * kept for good on the heads stream).
 */
import { fromBinary } from "@bufbuild/protobuf";
import { DeliverPolicy, type JetStreamClient } from "@nats-io/jetstream";
import { AuditCheckpointSchema, type AuditCheckpoint } from "../../gen/jobmesh/v1/audit_pb.js";
import type { AuditTopology } from "../bus/topology.ts";

/**
 * The checkpoints published on the stream for a tenant, in stream order (an ordered consumer
 * filtered on the tenant's subject), for comparison with the table. Ends at the last one; with
 * `from`, starts at the first published at or after that time (a checkpoint is published after
 * it is signed, so one signed at `from` or later is never before it), not at the tenant's first.
 */
export async function* publishedCheckpoints(js: JetStreamClient, topology: AuditTopology, tenantId: string, from?: Date): AsyncGenerator<AuditCheckpoint> {
  const position = from ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: from.toISOString() } : {};
  const consumer = await js.consumers.get(topology.checkpointsStream, { filter_subjects: topology.checkpointsSubject(tenantId), ...position });
  try {
    let left = (await consumer.info()).num_pending;
    while (left > 0) {
      const batch = await consumer.fetch({ max_messages: Math.min(left, 256), expires: 10_000 });
      let got = 0;
      for await (const msg of batch) {
        got++;
        left = msg.info.pending;
        yield fromBinary(AuditCheckpointSchema, msg.data);
      }
      if (got === 0) throw new Error(`the checkpoints stream stopped answering with ${left} checkpoints of tenant ${tenantId} unread`);
    }
  } finally {
    await consumer.delete().catch(() => {});
  }
}

/**
 * The highest checkpoint published for a tenant: its head (kept for good on the heads stream) or
 * the checkpoints stream's last, whichever signs further; undefined when neither holds one.
 */
export async function publishedHead(js: JetStreamClient, topology: AuditTopology, tenantId: string): Promise<AuditCheckpoint | undefined> {
  const [head, last] = await Promise.all([
    js.streams.get(topology.headsStream).then((s) => s.getMessage({ last_by_subj: topology.headsSubject(tenantId) })),
    js.streams.get(topology.checkpointsStream).then((s) => s.getMessage({ last_by_subj: topology.checkpointsSubject(tenantId) })),
  ]);
  const cps = [head, last].flatMap((m) => (m ? [fromBinary(AuditCheckpointSchema, m.data)] : []));
  return cps.sort((a, b) => (a.sequence > b.sequence ? -1 : a.sequence < b.sequence ? 1 : 0))[0];
}

/**
 * Publishing outbox rows to JetStream. The relay publishes whatever is due; the hot write paths
 * (CreateJob, a worker's claim and commit) publish their own rows straight after their commit
 * and then delete them, which spares every hand-off the relay's wake-up and transaction. Their
 * rows are due for the relay only `relayGraceMs` after the commit: when the writer dies (or NATS
 * is down) between commit and publish, the relay publishes them then, and Nats-Msg-Id lets
 * JetStream drop a copy that both sent.
 */
import { context, propagation, SpanKind, trace, type Span, type Tracer } from "@opentelemetry/api";
import type { MsgHdrs } from "@nats-io/transport-node";
import { tracedHeaders } from "../bus/index.ts";
import { groupCommit } from "../db/group-commit.ts";
import type { Queryable } from "../db/index.ts";
import type { Logger } from "../telemetry/index.ts";
import type { OutboxMessage } from "./writer.ts";

/** How long the relay leaves a directly published row to its writer. */
const relayGraceMs = 2_000;

/** Publishes to JetStream; resolves once the stream stored the message. */
export type Send = (subject: string, payload: Uint8Array, headers: MsgHdrs) => Promise<unknown>;

type Row = Pick<OutboxMessage, "id" | "subject" | "payload" | "headers">;

/** A producer span named after the rows' kind ("work", "events") in the trace of `row`. */
function publishSpan(tracer: Tracer, row: Row, count: number): { span: Span; headers: () => MsgHdrs } {
  const parent = propagation.extract(context.active(), row.headers);
  const span = tracer.startSpan(`outbox publish ${row.subject.split(".").slice(1, 2).join("")}`, {
    kind: SpanKind.PRODUCER,
    attributes: { "messaging.system": "nats", "messaging.destination.name": row.subject, "messaging.message.id": row.id, "messaging.batch.message_count": count },
  }, parent);
  return { span, headers: () => tracedHeaders(trace.setSpan(parent, span)) };
}

/** The message of a row: its headers, the span's trace context and Nats-Msg-Id = the row id. */
function send(publish: Send, row: Row, headers: MsgHdrs): Promise<unknown> {
  for (const [key, value] of Object.entries(row.headers)) {
    if (key !== "traceparent" && key !== "tracestate") headers.set(key, value);
  }
  headers.set("Nats-Msg-Id", row.id);
  return publish(row.subject, row.payload, headers);
}

/** Publishes one outbox row in a producer span of the row's trace (the relay's way). */
export async function publishOutboxRow(publish: Send, tracer: Tracer, row: Row): Promise<void> {
  const { span, headers } = publishSpan(tracer, row, 1);
  try {
    await send(publish, row, headers());
  } finally {
    span.end();
  }
}

/**
 * Publishes the rows of one change (one job, one trace) in one producer span, back to back on
 * one connection so that the stream stores them in this order. One result per row.
 */
function publishChangeRows(publish: Send, tracer: Tracer, rows: Row[]): Promise<PromiseSettledResult<unknown>[]> {
  const { span, headers } = publishSpan(tracer, rows[0], rows.length);
  return Promise.allSettled(rows.map((row) => send(publish, row, headers()))).finally(() => span.end());
}

export interface DirectPublisher {
  /**
   * When false, rows are written due at once and only the relay publishes them (tests that play
   * the relay themselves turn direct publishing off).
   */
  readonly enabled: boolean;
  /** Seconds to add to a row's availability so the relay leaves it to its writer. */
  readonly graceSeconds: number;
  /**
   * Publishes rows just committed, in order, and deletes the published ones. Never rejects: a
   * row that fails stays for the relay.
   */
  publish(rows: OutboxMessage[]): Promise<void>;
  /** Waits for pending publishes and deletes. */
  close(): Promise<void>;
}

export function createDirectPublisher(options: { db: Queryable; send: Send; tracer: Tracer; log: Logger; enabled: boolean }): DirectPublisher {
  const { db, tracer, log } = options;
  // Deleting published rows only keeps the relay from publishing them again: it can wait a
  // little and go in bulk.
  const deletions = groupCommit<string, void>(async (ids) => {
    await db.query({ name: "outbox-delete-published", text: "DELETE FROM outbox WHERE id = ANY($1::uuid[])", values: [ids] });
    return ids.map(() => undefined);
  }, { maxItems: 5000, lingerMs: 20 });
  const inFlight = new Set<Promise<void>>();
  let warned = 0;

  async function publishAndDelete(rows: OutboxMessage[]): Promise<void> {
    const sent = await publishChangeRows(options.send, tracer, rows);
    const published = rows.filter((_, i) => sent[i].status === "fulfilled");
    if (published.length < rows.length && Date.now() - warned > 10_000) {
      warned = Date.now();
      log.warn({ failed: rows.length - published.length }, "direct publish failed; the outbox relay will publish these rows");
    }
    await Promise.all(published.map((row) => deletions.add(row.id))).catch((error: unknown) => {
      // Rows left behind are published again by the relay; JetStream drops the copies.
      log.debug({ err: error }, "deleting published outbox rows failed");
    });
  }

  return {
    enabled: options.enabled,
    graceSeconds: options.enabled ? relayGraceMs / 1000 : 0,
    async publish(rows) {
      if (!options.enabled || rows.length === 0) return;
      const done = publishAndDelete(rows);
      inFlight.add(done);
      try {
        await done;
      } finally {
        inFlight.delete(done);
      }
    },
    async close() {
      await Promise.all([...inFlight]);
      await deletions.drain();
    },
  };
}

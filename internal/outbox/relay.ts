/**
 * The outbox relay: publishes committed outbox rows to JetStream. The outbox holds exactly the
 * messages not yet known to be published: a row is deleted once JetStream acked it. Rows are
 * claimed by that state (FOR UPDATE SKIP LOCKED on the rows that are due), never by "id > last
 * seen", so relays can run side by side and a row that commits late is never skipped. Rows that
 * their writer publishes itself become due for the relay only after a grace period
 * (publisher.ts): the relay is the safety net there, not the hot path. Each message carries
 * Nats-Msg-Id = the row id: a relay that dies after publishing but before its delete commits
 * publishes again, and JetStream drops the duplicate.
 */
import type { Tracer } from "@opentelemetry/api";
import type { JetStreamClient } from "@nats-io/jetstream";
import { inTransaction, type Pool } from "../db/index.ts";
import { listenChannels } from "../db/listener.ts";
import type { Logger } from "../telemetry/index.ts";
import { outboxChannel } from "./writer.ts";
import { publishOutboxRow, type Send } from "./publisher.ts";

export interface OutboxRelayOptions {
  db: Pool;
  js: JetStreamClient;
  log: Logger;
  tracer: Tracer;
  /** Rows per transaction. */
  batchSize?: number;
  /** Poll interval: picks up delayed rows and covers a missed NOTIFY. */
  pollMs?: number;
  /** Run the publish loop (default true); false leaves publishing to explicit publishBatch calls. */
  run?: boolean;
  /** Test hook: runs after publishing a batch and before its mark commits (throw to simulate a crash). */
  beforeMark?: (ids: string[]) => void | Promise<void>;
}

export interface OutboxRelay {
  /** Publishes one batch now; resolves with the number of rows published. */
  publishBatch(): Promise<number>;
  stop(): Promise<void>;
}

interface OutboxRow {
  id: string;
  subject: string;
  payload: Buffer;
  headers: Record<string, string>;
  /** Order of the row in the claimed batch. */
  position: string;
}

export function createOutboxRelay(options: OutboxRelayOptions): OutboxRelay {
  const { db, js, log, tracer } = options;
  const batchSize = options.batchSize ?? 200;

  const send: Send = (subject, payload, headers) => js.publish(subject, payload, { headers });
  const publish = (row: OutboxRow) => publishOutboxRow(send, tracer, row);

  async function publishBatch(): Promise<number> {
    return inTransaction(db, async (tx) => {
      // Claimed and deleted in one statement; the delete commits only after JetStream acked
      // every message, so a relay that dies in between leaves the rows (and publishes again).
      const { rows } = await tx.query<OutboxRow>(
        `DELETE FROM outbox o
         USING (
           SELECT id, row_number() OVER (ORDER BY available_time, create_time) AS position
           FROM (
             SELECT id, available_time, create_time FROM outbox
             WHERE available_time <= now()
             ORDER BY available_time, create_time
             LIMIT $1 FOR UPDATE SKIP LOCKED
           ) locked
         ) claimed
         WHERE o.id = claimed.id
         RETURNING o.id, o.subject, o.payload, o.headers, claimed.position`,
        [batchSize],
      );
      if (rows.length === 0) return 0;
      rows.sort((a, b) => Number(a.position) - Number(b.position));
      // Published back to back on one connection, so the stream stores them in this order
      // (each job's events stay ordered); the acks are awaited together.
      await Promise.all(rows.map(publish));
      await options.beforeMark?.(rows.map((r) => r.id));
      return rows.length;
    });
  }

  let stopped = options.run === false;
  let wake: (() => void) | undefined;
  // A NOTIFY that lands while a batch is being published must not wait for the next poll.
  let notified = false;
  if (stopped) return { publishBatch, stop: () => Promise.resolve() };
  // The LISTEN connection wakes the loop; while it is down (Postgres restarted, the backend
  // terminated) the relay polls alone until a new connection listens again.
  const listener = listenChannels(db, [outboxChannel], {
    log,
    name: "outbox relay",
    onNotification: () => {
      notified = true;
      wake?.();
    },
  });

  const loop = (async () => {
    let failures = 0;
    while (!stopped) {
      let published = 0;
      notified = false;
      try {
        published = await publishBatch();
        failures = 0;
      } catch (error) {
        failures++;
        if (failures === 1 || failures % 50 === 0) log.warn({ err: error }, "outbox relay: publish failed; retrying");
      }
      if ((published === batchSize || notified) && !stopped && failures === 0) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, failures > 0 ? Math.min(2000, 100 * failures) : (options.pollMs ?? 250));
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = undefined;
    }
  })();

  return {
    publishBatch,
    async stop() {
      stopped = true;
      wake?.();
      await loop;
      await listener.stop();
    },
  };
}

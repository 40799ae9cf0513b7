/**
 * The one writer of `outbox` rows. A row is written in the transaction of the change that causes
 * it, so a rolled-back change publishes nothing and a committed one is never lost; the relay (or
 * the writer's own direct publish, publisher.ts) sends it to JetStream after the commit.
 *
 * The hot paths change a job in ONE statement, without BEGIN/COMMIT, and write a row only for the
 * jobs the statement actually changed. So the INSERT is not a statement of its own: the caller
 * hands its statement (its CTEs, its final SELECT, its parameters) and writeOutbox adds the
 * INSERT as one more CTE, its parameters after the caller's, and runs the whole. Messages carry
 * the key of the row they belong to; with `gate` a message is written only when the caller's
 * statement produced that row.
 */
import type { Queryable } from "../db/index.ts";

/** Postgres channel the relay LISTENs on; a NOTIFY in the writing transaction wakes it on commit. */
export const outboxChannel = "jobmesh_outbox";

/** One outbox row: a message for JetStream, published by the relay or straight after commit. */
export interface OutboxMessage {
  /** Also the message's Nats-Msg-Id, so JetStream drops a second publish of the row. */
  id: string;
  subject: string;
  payload: Buffer;
  headers: Record<string, string>;
  /** Held back this long before the relay takes it (a retry's backoff). */
  delayMs: number;
}

/**
 * A message with the key (a uuid) of the row of the caller's change it belongs to. `shared`: its
 * payload is written by the caller's statement too and is taken from there (statement.payloadsFrom).
 */
export type KeyedOutboxMessage = OutboxMessage & { key?: string; shared?: boolean };

/** The caller's statement the outbox rows are written in, and how. */
export interface OutboxStatement {
  /** A prepared statement name: the text built here is the same for the same caller statement. */
  name?: string;
  /** The caller's CTEs without the leading WITH (`a AS (...), b AS (...)`). */
  with?: string;
  /** The caller's final SELECT; its rows are returned. Without it, none are. */
  select?: string;
  /** Parameters of `with` and `select` ($1..$n); the outbox's are numbered after them. */
  values?: unknown[];
  /**
   * Write a message only when the caller's statement produced the row it belongs to: a relation
   * of `with` (with alias) and the column matched against the message's key.
   */
  gate?: { from: string; key: string };
  /**
   * Seconds added to every row's delay: the grace in which the relay leaves a row to the writer
   * that publishes it itself (DirectPublisher.graceSeconds).
   */
  graceSeconds?: number;
  /** NOTIFY the relay on commit (rows nobody publishes directly); once per returned row. */
  notify?: boolean;
  /**
   * Where the payloads of messages written with `payload: null` come from: a relation of `with`
   * with the message id in column `id` and the bytes in column `payload`. Spares sending the same
   * bytes twice when the caller's statement writes them elsewhere too (job_events).
   */
  payloadsFrom?: string;
}

/**
 * Writes `messages` to the outbox in one batched INSERT, in the caller's transaction and in the
 * caller's statement when one is given (see the module comment). Resolves with the rows of the
 * caller's SELECT.
 */
export async function writeOutbox<R extends object = Record<string, unknown>>(
  db: Queryable,
  messages: KeyedOutboxMessage[],
  statement: OutboxStatement = {},
): Promise<R[]> {
  const values = [...(statement.values ?? [])];
  const p = (i: number) => `$${values.length + i}`;
  const rows = `unnest(${p(1)}::uuid[], ${p(2)}::text[], ${p(3)}::bytea[], ${p(4)}::jsonb[], ${p(5)}::float8[], ${p(6)}::uuid[])
         AS o(id, subject, payload, headers, delay, key)`;
  let source = statement.gate ? `${statement.gate.from} JOIN ${rows} ON o.key = ${statement.gate.key}` : rows;
  if (statement.payloadsFrom) source += ` LEFT JOIN ${statement.payloadsFrom} shared ON shared.id = o.id`;
  const payload = statement.payloadsFrom ? "coalesce(o.payload, shared.payload)" : "o.payload";
  const insert = `INSERT INTO outbox (id, subject, payload, headers, available_time)
       SELECT o.id, o.subject, ${payload}, o.headers, clock_timestamp() + make_interval(secs => ${p(7)}::float8 + o.delay / 1000)
       FROM ${source}`;
  const wake = `pg_notify('${outboxChannel}', '')`;
  const select = statement.select === undefined
    ? `SELECT${statement.notify ? ` ${wake}` : ""}`
    : statement.notify ? `SELECT q.*, ${wake} FROM (${statement.select}) q` : statement.select;
  values.push(
    messages.map((m) => m.id),
    messages.map((m) => m.subject),
    messages.map((m) => (m.shared && statement.payloadsFrom ? null : m.payload)),
    messages.map((m) => JSON.stringify(m.headers)),
    messages.map((m) => m.delayMs),
    messages.map((m) => m.key ?? null),
    statement.graceSeconds ?? 0,
  );
  const text = `WITH ${statement.with ? `${statement.with}, ` : ""}box AS (
       ${insert}
     )
     ${select}`;
  const { rows: result } = await db.query<R>(statement.name ? { name: statement.name, text, values } : { text, values });
  return result;
}

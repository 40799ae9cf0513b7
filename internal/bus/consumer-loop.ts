/**
 * The one loop over a durable pull consumer, shared by the consumers that commit what they read
 * in Postgres (the audit store, the webhooks fan-out): read with consume(), bounded in messages
 * and bytes, hand each batch to `handle`, and acknowledge it only once `handle` resolved, so a
 * crash before the commit redelivers the batch and the handler's idempotency (event ids, ON
 * CONFLICT) drops what was already stored.
 *
 * The worker's work loop does not use it: it serves several consumers in priority order, holds
 * each task for the length of a stage (extending its ack deadline while it runs) and fences its
 * commit by attempt, none of which a batch-then-ack loop has.
 */
import type { JetStreamClient, JsMsg } from "@nats-io/jetstream";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "../telemetry/index.ts";

export interface DurableConsumerOptions {
  js: JetStreamClient;
  stream: string;
  /** The durable consumer's name; it must exist (provisionTopology). */
  consumer: string;
  /** Messages per batch at most (default 500); at most twice as many are read ahead. */
  maxMessages?: number;
  /**
   * Bytes per batch at most (default 4 MiB; a batch always holds at least one message); at most
   * twice as many are read ahead. Also the size of a pull: keep it above NATS's max_payload, or a
   * message that does not fit is never delivered.
   */
  maxBytes?: number;
  /** How long one pull request waits on the server (consume()'s `expires`; default nats.js's). */
  expiresMs?: number;
  /**
   * Batches handled at once (default 1: one after the other, in stream order). More only for a
   * handler whose batches commute (idempotent, order-free): the next batch then need not wait for
   * the previous one's commit.
   */
  concurrency?: number;
  /**
   * Handles a batch (commits it). Resolving acknowledges every message of the batch; rejecting
   * naks them (redelivered after a backoff). A message that can never be handled (undecodable)
   * must not hold the others back: `handle` logs it and terminates it (msg.term()), and the loop's
   * ack or nak of it is then a no-op.
   */
  handle(batch: JsMsg[]): Promise<void>;
  log: Logger;
  /** Aborting stops the loop: the batch in hand is finished, what was read ahead is nak'ed. */
  signal: AbortSignal;
  /** Called once the consumer is open and read from. */
  onOpen?: () => void;
}

const defaultMaxMessages = 500;
const defaultMaxBytes = 4 * 1024 * 1024;
// A failing handler (Postgres away) is retried after a pause growing to this, not in a spin.
const maxBackoffMs = 5_000;
// With nothing to do the loop still looks at its signal this often.
const idleWakeMs = 1_000;

/**
 * Runs the loop until `signal` aborts; resolves when it has stopped (the batch in hand handled,
 * the rest given back). Rejects when the consumer cannot be opened.
 */
export async function runDurableConsumer(options: DurableConsumerOptions): Promise<void> {
  const { signal, log } = options;
  const maxMessages = options.maxMessages ?? defaultMaxMessages;
  const maxBytes = options.maxBytes ?? defaultMaxBytes;
  const consumer = await options.js.consumers.get(options.stream, options.consumer);
  // Pulls are bounded in bytes (consume() takes bytes or messages, not both); the read-ahead
  // queue below bounds the messages.
  const messages = await consumer.consume({ max_bytes: maxBytes, ...(options.expiresMs !== undefined && { expires: options.expiresMs }) });
  options.onOpen?.();
  const queue: JsMsg[] = [];
  let queuedBytes = 0;
  let wake: (() => void) | undefined;
  let space: (() => void) | undefined;
  let closing = false;
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort);

  const reader = (async () => {
    for await (const msg of messages) {
      queue.push(msg);
      queuedBytes += msg.data.length;
      wake?.();
      // Back-pressure: consume() stops pulling while its buffer is full and a batch is handled.
      if ((queue.length >= maxMessages * 2 || queuedBytes >= maxBytes * 2) && !closing) await new Promise<void>((resolve) => (space = resolve));
    }
  })();

  const concurrency = options.concurrency ?? 1;
  const handling = new Set<Promise<void>>();
  let failures = 0;
  let pausedUntil = 0;
  const handleBatch = async (batch: JsMsg[]) => {
    try {
      await options.handle(batch);
      failures = 0;
      for (const msg of batch) msg.ack();
    } catch (error) {
      failures++;
      const delayMs = Math.min(maxBackoffMs, 200 * failures);
      if (failures === 1 || failures % 50 === 0) log.warn({ err: error, consumer: options.consumer, failures }, "durable consumer: batch not handled; redelivered");
      for (const msg of batch) msg.nak(delayMs);
      pausedUntil = Math.max(pausedUntil, Date.now() + delayMs);
    }
  };
  try {
    while (!signal.aborted) {
      if (Date.now() < pausedUntil) {
        await sleep(pausedUntil - Date.now(), undefined, { signal }).catch(() => {});
        continue;
      }
      if (queue.length === 0 || handling.size >= concurrency) {
        await new Promise<void>((resolve) => {
          wake = resolve;
          setTimeout(resolve, idleWakeMs).unref();
        });
        wake = undefined;
        continue;
      }
      const batch = takeBatch(queue, maxMessages, maxBytes);
      for (const msg of batch) queuedBytes -= msg.data.length;
      space?.();
      space = undefined;
      const handled: Promise<void> = handleBatch(batch).finally(() => {
        handling.delete(handled);
        wake?.();
      });
      handling.add(handled);
    }
  } finally {
    await Promise.all(handling);
    signal.removeEventListener("abort", onAbort);
    closing = true;
    // The reader is released before close() is awaited: close() resolves only once the iterator
    // has been read to its end, which a reader waiting for space would never do.
    space?.();
    await messages.close().catch(() => {});
    await reader.catch(() => {});
    // Read but not handled: redelivered now, to this consumer's next reader.
    for (const msg of queue.splice(0)) msg.nak();
  }
}

/** The first messages of `queue` making at most `maxBytes` (at least one), at most `maxCount`; removed from it. */
function takeBatch(queue: JsMsg[], maxCount: number, maxBytes: number): JsMsg[] {
  let n = 0;
  let bytes = 0;
  while (n < queue.length && n < maxCount && (n === 0 || bytes + queue[n].data.length <= maxBytes)) bytes += queue[n++].data.length;
  return queue.splice(0, n);
}

/**
 * The audit sink: where the recorder (and the gateway) hand their audit events. `record()` only
 * queues; a pump publishes the queue to JetStream in batches, many in flight (sink-publish.ts).
 *
 * When NATS does not take an event (the connection is down, a publish is refused or not
 * acknowledged in time, or the queue outgrows `maxQueue` because NATS is slow), the event goes
 * to the spool (spool.ts), and so does everything recorded after it: events reach the stream in
 * the order they were recorded. While the spool holds events a replay loop publishes it, in
 * order and with the same Nats-Msg-Id (JetStream drops the copy of an event whose first
 * acknowledgement was lost), then empties it and publishing goes direct again. A spool left by
 * a dead process at the same path (or at `<path>.<pid>`) is replayed at start (sink-spool.ts).
 * An event that can never be published (poison) goes to `<spoolFile>.dead` (sink-dead-letter.ts)
 * and holds nothing back. Memory is bounded (tuning.maxHeld) and close() has a deadline.
 *
 * The window: an event is lost only if the process dies while the event is in memory, from
 * `record()` until JetStream acknowledged it or the spool holds it fsynced. Normally that is the
 * linger (2 ms) plus one JetStream publish round trip (a few milliseconds; with NATS's
 * `sync_interval: always` it includes NATS's own fsync). While NATS is unreachable it is the
 * linger plus one spool write and fsync (milliseconds). When the connection drops, the events
 * in flight are spooled at once; when NATS stops answering but the connection stays up, an
 * event waits up to the acknowledgement timeout (5 s) before it is spooled. The spool is kept
 * per process and path; a copy JetStream already had is dropped by Nats-Msg-Id within the
 * stream's duplicate window (2 min), and after it by the store's de-duplication by event id.
 *
 * Runtime-neutral (node:fs, node:path, @nats-io/*): the Deno gateway imports it too.
 */
import type { JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
// @deno-types="../../gen/jobmesh/v1/audit_pb.d.ts"
import type { AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import { openDeadLetters } from "./sink-dead-letter.ts";
import { createPublisher, type Batch, type Entry } from "./sink-publish.ts";
import { openSpoolSources } from "./sink-spool.ts";
import type { AuditTopology } from "../bus/topology.ts";

export interface AuditSink {
  /** Queues the event; never throws, never waits. */
  record(event: AuditEvent): void;
  /** Resolves once every event recorded so far is acknowledged by JetStream or in the spool. */
  flush(): Promise<void>;
  /** Flushes, stops the loops and releases the spool (left on disk if it holds events). */
  close(): Promise<void>;
  /** Events in spool files, not yet replayed. */
  readonly spooled: number;
  /** Events given up on as poison (they can never be published) and written to `<spoolFile>.dead`. */
  readonly deadLettered: number;
  /** Events dropped by this sink: recorded past the memory bound or after close(), or still held when close() gave up. */
  readonly dropped: number;
}

/** What the sink logs through: pino's Logger fits; the gateway adapts its own. */
export interface AuditSinkLog {
  warn(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
}

/** Limits; the defaults suit a service, tests shrink them. */
export interface AuditSinkTuning {
  lingerMs: number;
  batchSize: number;
  /** Events published and not yet acknowledged, at most. */
  maxInFlight: number;
  /** Queued events beyond which the queue spills to the spool rather than grow. */
  maxQueue: number;
  /**
   * Events held in memory (queued, or waiting for a spool write), at most; record() drops beyond
   * it. Reached only when NATS and the spool's disk both fail: the memory stays bounded.
   */
  maxHeld: number;
  ackTimeoutMs: number;
  /** Pause before a failed replay (or spool write) is tried again. */
  retryMs: number;
  replayBatch: number;
  /** The dead-letter file's bound: past it, poison events are only counted and logged. */
  maxDeadLetterBytes: number;
  /** How long close() tries to publish or spool what it holds before it gives up on it (and says so). */
  closeTimeoutMs: number;
}

const defaults: AuditSinkTuning = { lingerMs: 2, batchSize: 256, maxInFlight: 8192, maxQueue: 50_000, maxHeld: 200_000, ackTimeoutMs: 5_000, retryMs: 1_000, replayBatch: 4_096, closeTimeoutMs: 10_000, maxDeadLetterBytes: 256 * 1024 * 1024 };

const unrefTimer = (timer: unknown) => (timer as { unref?: () => void }).unref?.();

export async function createAuditSink(deps: {
  nc: NatsConnection; js: JetStreamClient; topology: AuditTopology; spoolFile: string; log: AuditSinkLog; tuning?: Partial<AuditSinkTuning>;
}): Promise<AuditSink> {
  const { nc, log } = deps;
  const tune = { ...defaults, ...deps.tuning };
  if (nc.isClosed()) throw new Error("audit sink: the NATS connection is closed");
  const deadLetters = openDeadLetters(`${deps.spoolFile}.dead`, log, tune.maxDeadLetterBytes);
  const sources = await openSpoolSources({ spoolFile: deps.spoolFile, deadLetters, replayBatch: tune.replayBatch, log });

  const queue: Entry[] = [];
  const inflight: Batch[] = [];
  let toSpool: Entry[] = [];
  const toDeadLetter: Entry[] = [];
  const waiters: { target: number; resolve: () => void }[] = [];
  // Once anything is spooled, newer events go behind it, so that replay keeps the order.
  let spooling = sources.ownHolds;
  let inflightEvents = 0;
  let nextSeq = 0;
  let retryAt = 0;
  let writeRetryAt = 0;
  let dropped = 0;
  let failures = 0;
  let closing = false;
  let lingerTimer: ReturnType<typeof setTimeout> | undefined;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;

  const publisher = createPublisher({
    nc, topology: deps.topology, ackTimeoutMs: tune.ackTimeoutMs, onSettled: () => wake(), onFailure: noteFailure,
    onConnection(up) {
      if (up) retryAt = 0;
      wake();
    },
  });

  function noteFailure(why: unknown) {
    if (failures++ % 1000 === 0) log.warn({ err: why, failures }, "audit sink: JetStream did not take an event; spooling");
    retryAt = Date.now() + tune.retryMs;
  }

  /** Settled batches leave the head of the line in order; their unacknowledged events go to the spool (poison to the dead letters). */
  function retire() {
    while (inflight.length > 0 && inflight[0].settled) {
      const batch = inflight.shift()!;
      inflightEvents -= batch.entries.length;
      for (const entry of batch.entries) if (!entry.acked) (entry.poison ? toDeadLetter : toSpool).push(entry);
      if (batch.entries.every((e) => e.acked)) failures = 0;
    }
    if (toSpool.length > 0) spooling = true;
  }

  /** Writes what waits for the spool, chunk by chunk; false when a write failed (retried after retryMs). */
  async function drainToSpool(): Promise<boolean> {
    while (toSpool.length > 0 && Date.now() >= writeRetryAt) {
      // In chunks: one write buffer stays small however much waits for the spool.
      const entries = toSpool.slice(0, tune.replayBatch);
      try {
        await sources.append(entries);
      } catch (error) {
        log.error({ err: error, events: toSpool.length }, "audit sink: cannot write the spool; holding the events in memory");
        writeRetryAt = Date.now() + tune.retryMs;
        wakeAt(writeRetryAt);
        return false;
      }
      toSpool = toSpool.slice(entries.length);
      spooling = true;
    }
    return true;
  }

  /** Publishes the next chunk of the oldest spool and waits for it; false when it must wait. */
  async function replayChunk(): Promise<boolean> {
    const result = await sources.replayChunk((entries) => new Promise<void>((resolve) => publisher.send(entries, resolve)));
    if (result === "caught-up") spooling = false;
    if (result === "wait") wakeAt((retryAt = Date.now() + tune.retryMs));
    return result !== "wait";
  }

  /** One timer for every retry: they all come a retryMs after a failure. */
  function wakeAt(at: number) {
    if (retryTimer) return;
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      wake();
    }, Math.max(0, at - Date.now()));
    unrefTimer(retryTimer);
  }

  let pumping: Promise<void> | undefined;
  let again = false;
  let woken = false;
  function wake() {
    if (woken) return;
    woken = true;
    queueMicrotask(() => {
      woken = false;
      if (pumping) again = true;
      else pumping = pump().finally(() => (pumping = undefined));
    });
  }

  async function pump() {
    do {
      again = false;
      retire();
      if (toDeadLetter.length > 0) await deadLetters.write(toDeadLetter.splice(0).map((e) => ({ event: e.event, bytes: e.bytes, reason: e.poison! })));
      if (publisher.connected && !spooling && queue.length <= tune.maxQueue) {
        while (queue.length > 0 && inflightEvents < tune.maxInFlight) {
          const batch = publisher.send(queue.splice(0, tune.batchSize));
          inflight.push(batch);
          inflightEvents += batch.entries.length;
        }
      } else {
        if (queue.length > tune.maxQueue && inflight.length > 0) {
          // NATS is slow: spool what is in flight rather than wait (a late copy is deduplicated).
          for (const batch of inflight) publisher.fail(batch.entries);
          retire();
        }
        // Behind what was in flight, so not before every batch before it has settled.
        if (inflight.length === 0 && queue.length > 0) for (const entry of queue.splice(0)) toSpool.push(entry);
        if (!(await drainToSpool())) break;
      }
      // Before the replay: a flush waits for the spool's fsync, not for a replay round trip.
      notifyWaiters();
      const replayable = sources.adopting || (spooling && inflight.length === 0 && toSpool.length === 0);
      if (publisher.connected && !closing && replayable) {
        if (Date.now() < retryAt) wakeAt(retryAt);
        else if (await replayChunk()) again = true;
      }
    } while (again);
  }

  function notifyWaiters() {
    for (let i = waiters.length - 1; i >= 0; i--) {
      if (lowWater() < waiters[i].target) continue;
      waiters[i].resolve();
      waiters.splice(i, 1);
    }
  }

  /** The oldest event recorded that is neither acknowledged, spooled nor dead-lettered. */
  function lowWater(): number {
    let low = nextSeq;
    if (toDeadLetter.length > 0) low = Math.min(low, toDeadLetter[0].seq);
    if (toSpool.length > 0) low = Math.min(low, toSpool[0].seq);
    if (inflight.length > 0) low = Math.min(low, inflight[0].entries[0].seq);
    if (queue.length > 0) low = Math.min(low, queue[0].seq);
    return low;
  }

  if (spooling || sources.adopting) wake();

  let closed: Promise<void> | undefined;
  const sink: AuditSink = {
    record(event) {
      // Everything held in memory counts, the events waiting for a failing spool write too.
      if (closing || queue.length + toSpool.length >= tune.maxHeld) {
        // The last resort (closed sink, or NATS and the disk both failing): say so, never throw.
        if (dropped++ % 1000 === 0) log.error({ dropped, closing }, "audit sink: event dropped");
        return;
      }
      queue.push({ seq: nextSeq++, event, acked: false });
      if (queue.length >= tune.batchSize) wake();
      else if (!lingerTimer) {
        lingerTimer = setTimeout(() => {
          lingerTimer = undefined;
          wake();
        }, tune.lingerMs);
      }
    },
    flush() {
      const target = nextSeq;
      if (lowWater() >= target) return Promise.resolve();
      return new Promise<void>((resolve) => {
        waiters.push({ target, resolve });
        wake();
      });
    },
    close() {
      closed ??= (async () => {
        // Calls that end while the sink closes still record: flush until nothing is left, or
        // until the deadline (NATS and the disk both failing would make this wait forever).
        let timer: ReturnType<typeof setTimeout> | undefined;
        const expired = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), tune.closeTimeoutMs)));
        while (lowWater() < nextSeq && (await Promise.race([sink.flush().then(() => true), expired])));
        clearTimeout(timer);
        closing = true;
        while (pumping) await pumping;
        const lost = queue.length + toSpool.length + inflight.reduce((n, b) => n + b.entries.filter((e) => !e.acked).length, 0);
        if (lost > 0) {
          dropped += lost;
          log.error({ lost, dropped, timeoutMs: tune.closeTimeoutMs }, "audit sink: closed with events neither published nor spooled; they are lost");
        }
        clearTimeout(retryTimer);
        clearTimeout(lingerTimer);
        publisher.close();
        await deadLetters.close();
        await sources.close();
      })();
      return closed;
    },
    get spooled() {
      return sources.spooled;
    },
    get dropped() {
      return dropped;
    },
    get deadLettered() {
      return deadLetters.count;
    },
  };
  return sink;
}

/**
 * The audit sink: where the recorder (and the gateway) hand their audit events. `record()` only
 * queues; a pump publishes the queue to JetStream in batches, many in flight, each event on its
 * tenant's subject with `Nats-Msg-Id` = its event id. Acknowledgements come back on one shared
 * subscription (as internal/bus/publisher.ts): `js.publish` would cost a request, a timer and
 * two Error objects per event on the RPC path.
 *
 * When NATS does not take an event (the connection is down, a publish is refused or not
 * acknowledged in time, or the queue outgrows `maxQueue` because NATS is slow), the event goes
 * to the spool (spool.ts), and so does everything recorded after it: events reach the stream in
 * the order they were recorded. While the spool holds events a replay loop publishes it, in
 * order and with the same Nats-Msg-Id (JetStream drops the copy of an event whose first
 * acknowledgement was lost), then empties it and publishing goes direct again. A spool left by
 * a dead process at the same path (or at `<path>.<pid>`) is replayed at start.
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
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import type { JetStreamClient } from "@nats-io/jetstream";
import { ClosedConnectionError, createInbox, DrainingConnectionError, headers, type Msg, type NatsConnection } from "@nats-io/transport-node";
// @deno-types="../../gen/jobmesh/v1/audit_pb.d.ts"
import { AuditEventSchema, type AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import { openDeadLetters, type DeadLetter } from "./sink-dead-letter.ts";
import { claimOrphanSpools, claimSpoolFile, maxSpoolRecordBytes, openSpool, type Spool, type SpoolClaim } from "./spool.ts";
import type { AuditTopology } from "./topology.ts";

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

// `poison`: why the event can never be published; it goes to the dead letters, not the spool.
interface Entry { seq: number; event: AuditEvent; bytes?: Uint8Array; token?: string; acked: boolean; poison?: string; batch?: Batch }
interface Batch { entries: Entry[]; remaining: number; settled: boolean; sentAt: number; onSettled?: () => void }
interface Source { claim: SpoolClaim; spool: Spool; offset: number; replayed: number }

const eventIdOf = (event: AuditEvent) => event.name.slice(event.name.lastIndexOf("/") + 1);
const unrefTimer = (timer: unknown) => (timer as { unref?: () => void }).unref?.();

export async function createAuditSink(deps: {
  nc: NatsConnection; js: JetStreamClient; topology: AuditTopology; spoolFile: string; log: AuditSinkLog; tuning?: Partial<AuditSinkTuning>;
}): Promise<AuditSink> {
  const { nc, topology, log } = deps;
  const tune = { ...defaults, ...deps.tuning };
  if (nc.isClosed()) throw new Error("audit sink: the NATS connection is closed");
  const claim = await claimSpoolFile(deps.spoolFile);
  const own: Source = { claim, spool: await openSpool(claim.file).catch(async (error) => { await claim.release({ removeFile: false }); throw error; }), offset: 0, replayed: 0 };
  const adopted: Source[] = [];
  for (const orphan of await claimOrphanSpools(deps.spoolFile)) {
    const spool = await openSpool(orphan.file).catch((error: unknown) => log.error({ err: error, file: orphan.file }, "audit sink: cannot open a dead process's spool"));
    if (spool) adopted.push({ claim: orphan, spool, offset: 0, replayed: 0 });
    else await orphan.release({ removeFile: false });
  }
  for (const { spool } of [own, ...adopted]) {
    if (spool.tornBytes > 0) log.warn({ file: spool.path, bytes: spool.tornBytes }, "audit sink: dropped a torn last record of the spool");
  }

  const deadLetters = openDeadLetters(`${deps.spoolFile}.dead`, log, tune.maxDeadLetterBytes);
  const queue: Entry[] = [];
  const inflight: Batch[] = [];
  let toSpool: Entry[] = [];
  let toDeadLetter: Entry[] = [];
  const pending = new Map<string, Entry>();
  const waiters: { target: number; resolve: () => void }[] = [];
  // Once anything is spooled, newer events go behind it, so that replay keeps the order.
  let spooling = own.spool.records > 0;
  let connected = !nc.isClosed();
  let inflightEvents = 0;
  let nextSeq = 0;
  let nextToken = 0;
  let retryAt = 0;
  let writeRetryAt = 0;
  let dropped = 0;
  let failures = 0;
  let closing = false;
  let replayBatch: Batch | undefined;
  let lingerTimer: ReturnType<typeof setTimeout> | undefined;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;

  const inbox = createInbox();
  const sub = nc.subscribe(`${inbox}.*`, { callback: (error, msg) => (error ? undefined : onAck(msg)) });

  function onAck(msg: Msg) {
    const entry = pending.get(msg.subject.slice(inbox.length + 1));
    if (!entry) return; // failed already (timed out, disconnected)
    pending.delete(entry.token!);
    const refusal = refusalOf(msg);
    if (refusal?.permanent) entry.poison = refusal.reason;
    else if (refusal) noteFailure(refusal.reason);
    settle(entry, refusal === undefined);
  }

  function settle(entry: Entry, acked: boolean) {
    entry.acked = acked;
    const batch = entry.batch!;
    if (--batch.remaining > 0) return;
    batch.settled = true;
    batch.onSettled?.();
    wake();
  }

  function fail(entries: Iterable<Entry>) {
    for (const entry of entries) if (entry.token !== undefined && pending.delete(entry.token)) settle(entry, false);
  }

  function noteFailure(why: unknown) {
    if (failures++ % 1000 === 0) log.warn({ err: why, failures }, "audit sink: JetStream did not take an event; spooling");
    retryAt = Date.now() + tune.retryMs;
  }

  function send(entries: Entry[], onSettled?: () => void): Batch {
    const batch: Batch = { entries, remaining: entries.length, settled: entries.length === 0, sentAt: Date.now(), onSettled };
    if (batch.settled) onSettled?.();
    for (const entry of entries) {
      const token = (nextToken++).toString(36);
      entry.token = token;
      entry.batch = batch;
      entry.acked = false;
      entry.poison = undefined;
      pending.set(token, entry);
      try {
        entry.bytes ??= toBinary(AuditEventSchema, entry.event);
        const h = headers();
        h.set("Nats-Msg-Id", eventIdOf(entry.event));
        nc.publish(topology.eventsSubject(entry.event.tenant), entry.bytes, { reply: `${inbox}.${token}`, headers: h });
      } catch (error) {
        // The connection's state is NATS's; anything else thrown here is the event's own (larger
        // than max_payload, a subject NATS refuses, not writable by the codec): trying again cannot help.
        if (error instanceof ClosedConnectionError || error instanceof DrainingConnectionError) noteFailure(error);
        else entry.poison = String(error);
        fail([entry]);
      }
    }
    return batch;
  }

  /** Settled batches leave the head of the line in order; their unacknowledged events go to the spool. */
  function retire() {
    while (inflight.length > 0 && inflight[0].settled) {
      const batch = inflight.shift()!;
      inflightEvents -= batch.entries.length;
      for (const entry of batch.entries) if (!entry.acked) (entry.poison ? toDeadLetter : toSpool).push(entry);
      if (batch.entries.every((e) => e.acked)) failures = 0;
    }
    if (toSpool.length > 0) spooling = true;
  }

  async function writeDeadLetters() {
    const letters: DeadLetter[] = toDeadLetter.map((e) => ({ event: e.event, bytes: e.bytes, reason: e.poison ?? "" }));
    toDeadLetter = [];
    await deadLetters.write(letters);
  }

  async function writeSpool() {
    // In chunks: one write buffer stays small however much waits for the spool.
    const entries = toSpool.slice(0, tune.replayBatch);
    const payloads: Uint8Array[] = [];
    const poison: DeadLetter[] = [];
    for (const entry of entries) {
      try {
        entry.bytes ??= toBinary(AuditEventSchema, entry.event);
      } catch (error) {
        // Not an AuditEvent the codec can write: it must not hold back every event behind it.
        poison.push({ event: entry.event, reason: `cannot be serialised: ${String(error)}` });
        continue;
      }
      // Read back, a longer record would be taken for garbage: the spool refuses it.
      if (entry.bytes.length > maxSpoolRecordBytes) poison.push({ event: entry.event, bytes: entry.bytes, reason: `${entry.bytes.length} bytes: larger than a spool record` });
      else payloads.push(entry.bytes);
    }
    try {
      await own.spool.append(payloads);
      toSpool = toSpool.slice(entries.length);
      spooling = true;
      await deadLetters.write(poison);
    } catch (error) {
      log.error({ err: error, file: own.spool.path, events: entries.length }, "audit sink: cannot write the spool; holding the events in memory");
      writeRetryAt = Date.now() + tune.retryMs;
      wakeAt(writeRetryAt);
      return false;
    }
    return true;
  }

  /** Writes what waits for the spool, chunk by chunk; false when a write failed (retried after retryMs). */
  async function drainToSpool(): Promise<boolean> {
    while (toSpool.length > 0 && Date.now() >= writeRetryAt) if (!(await writeSpool())) return false;
    return true;
  }

  /** Publishes the next chunk of the oldest spool and waits for it; false when it must wait. */
  async function replayChunk(): Promise<boolean> {
    const source = adopted[0] ?? own;
    if (source.offset >= source.spool.bytes) {
      if (source === own) {
        await own.spool.truncate();
        own.offset = own.replayed = 0;
        spooling = false;
      } else {
        adopted.shift();
        await source.spool.close();
        await source.claim.release({ removeFile: true });
      }
      return true;
    }
    const { payloads, ends } = await source.spool.read(source.offset, tune.replayBatch);
    if (payloads.length === 0) {
      log.error({ file: source.spool.path, offset: source.offset }, "audit sink: unreadable spool record; the rest of the spool is skipped");
      source.offset = source.spool.bytes;
      return true;
    }
    const entries: Entry[] = [];
    for (const bytes of payloads) {
      try {
        entries.push({ seq: -1, event: fromBinary(AuditEventSchema, bytes), bytes, acked: false });
      } catch (error) {
        entries.push({ seq: -1, event: undefined as never, bytes, acked: false, poison: `a spooled record that is not an AuditEvent: ${String(error)}` });
      }
    }
    await new Promise<void>((resolve) => (replayBatch = send(entries.filter((e) => !e.poison), resolve)));
    replayBatch = undefined;
    // The spool moves on past what is acknowledged and past poison (kept in the dead letters).
    let done = 0;
    while (done < entries.length && (entries[done].acked || entries[done].poison)) done++;
    await deadLetters.write(entries.slice(0, done).filter((e) => e.poison).map((e) => ({ event: e.event, bytes: e.bytes, reason: e.poison! })));
    if (done > 0) {
      source.offset = ends[done - 1];
      source.replayed += done;
    }
    if (done < entries.length) wakeAt((retryAt = Date.now() + tune.retryMs));
    return done === entries.length;
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
      if (toDeadLetter.length > 0) await writeDeadLetters();
      if (connected && !spooling && queue.length <= tune.maxQueue) {
        while (queue.length > 0 && inflightEvents < tune.maxInFlight) {
          const batch = send(queue.splice(0, tune.batchSize));
          inflight.push(batch);
          inflightEvents += batch.entries.length;
        }
      } else {
        if (queue.length > tune.maxQueue && inflight.length > 0) {
          // NATS is slow: spool what is in flight rather than wait (a late copy is deduplicated).
          for (const batch of inflight) fail(batch.entries);
          retire();
        }
        // Behind what was in flight, so not before every batch before it has settled.
        if (inflight.length === 0 && queue.length > 0) for (const entry of queue.splice(0)) toSpool.push(entry);
        if (!(await drainToSpool())) break;
      }
      // Before the replay: a flush waits for the spool's fsync, not for a replay round trip.
      notifyWaiters();
      const replayable = adopted.length > 0 || (spooling && inflight.length === 0 && toSpool.length === 0);
      if (connected && !closing && replayable) {
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

  /** The oldest event recorded that is neither acknowledged nor spooled. */
  function lowWater(): number {
    let low = nextSeq;
    if (toDeadLetter.length > 0) low = Math.min(low, toDeadLetter[0].seq);
    if (toSpool.length > 0) low = Math.min(low, toSpool[0].seq);
    if (inflight.length > 0) low = Math.min(low, inflight[0].entries[0].seq);
    if (queue.length > 0) low = Math.min(low, queue[0].seq);
    return low;
  }

  // No acknowledgement in time: the event is treated as not taken (a late copy is deduplicated).
  const sweeper = setInterval(() => {
    const before = Date.now() - tune.ackTimeoutMs;
    for (const batch of replayBatch ? [replayBatch, ...inflight] : inflight) {
      if (batch.sentAt >= before) continue;
      if (!batch.settled) noteFailure(new Error(`no JetStream acknowledgement within ${tune.ackTimeoutMs} ms`));
      fail(batch.entries);
    }
  }, Math.min(1_000, tune.ackTimeoutMs));
  unrefTimer(sweeper);

  // The connection's state decides between publishing and spooling. A publish made while it is
  // down would be sent after the reconnect, ahead of the spool's older events: it is spooled instead.
  const statuses = nc.status();
  let statusSeen = 0;
  void (async () => {
    for await (const status of statuses) {
      if (status.type === "disconnect" || status.type === "close") {
        connected = false;
        fail([...pending.values()]);
      } else if (status.type === "reconnect") {
        connected = true;
        retryAt = 0;
      } else continue;
      statusSeen++;
      wake();
    }
  })();
  // Connected as far as we know; a connection down at start answers no flush.
  void nc.flush().catch(() => {
    if (statusSeen > 0) return;
    connected = false;
    wake();
  });
  if (spooling || adopted.length > 0) wake();

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
        clearInterval(sweeper);
        clearTimeout(retryTimer);
        clearTimeout(lingerTimer);
        (statuses as { stop?: () => void }).stop?.();
        sub.unsubscribe();
        await deadLetters.close();
        for (const source of [own, ...adopted]) {
          await source.spool.close();
          // An empty spool is removed; one holding events stays for the next process on this path.
          await source.claim.release({ removeFile: source.spool.bytes === source.offset && source === own });
        }
      })();
      return closed;
    },
    get spooled() {
      return [own, ...adopted].reduce((n, s) => n + s.spool.records - s.replayed, 0);
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

// A PubAck starts with its stream name; a refusal with its error (JSPubAckResponse puts it first).
const pubAckStart = new TextEncoder().encode('{"stream":');

/** JetStream's error for a message larger than the stream's max_msg_size: the event's own, for good. */
const messageTooLarge = 10054;

/** Why JetStream refused a publish, from its reply, and whether the event itself is the cause; undefined for a PubAck. */
function refusalOf(msg: Msg): { reason: string; permanent: boolean } | undefined {
  const transient = (reason: string) => ({ reason, permanent: false });
  if (msg.headers?.code === 503) return transient("no stream stores this subject (no responders)");
  // Most replies are PubAcks: known by their first bytes, without decoding and parsing them.
  if (msg.data.length > pubAckStart.length && pubAckStart.every((b, i) => msg.data[i] === b)) return undefined;
  try {
    const reply = msg.json<{ error?: { description?: string; err_code?: number }; stream?: string }>();
    if (reply.error) return { reason: `JetStream refused the event: ${reply.error.description ?? "unknown error"}`, permanent: reply.error.err_code === messageTooLarge };
    return reply.stream ? undefined : transient("invalid JetStream acknowledgement");
  } catch {
    return transient("unreadable JetStream acknowledgement");
  }
}

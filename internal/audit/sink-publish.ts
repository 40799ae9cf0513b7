/**
 * The audit sink's live publishing: events go to JetStream in batches, each on its tenant's
 * subject with `Nats-Msg-Id` = its event id. Acknowledgements come back on one shared
 * subscription (as internal/bus/publisher.ts): `js.publish` would cost a request, a timer and
 * two Error objects per event on the RPC path. An event is settled once: acknowledged, or not
 * taken (refused, not acknowledged within ackTimeoutMs, or the connection dropped; a late copy
 * is dropped by Nats-Msg-Id), or poison (it can never be published: see sink-dead-letter.ts).
 */
import { ClosedConnectionError, createInbox, DrainingConnectionError, type Msg, type MsgHdrs, type NatsConnection } from "@nats-io/transport-node";
// @deno-types="../../gen/jobmesh/v1/audit_pb.d.ts"
import type { AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import { encodeAuditEvent } from "./event-codec.ts";
import type { AuditTopology } from "../bus/topology.ts";

/** One event on its way; `seq` orders what the sink recorded (-1 for a replayed spool record). */
export interface Entry {
  seq: number;
  event: AuditEvent;
  bytes?: Uint8Array;
  token?: string;
  acked: boolean;
  /** Why the event can never be published; it goes to the dead letters, not the spool. */
  poison?: string;
  batch?: Batch;
}

/** Events sent together; settled when every one of them is. */
export interface Batch {
  entries: Entry[];
  remaining: number;
  settled: boolean;
  sentAt: number;
  onSettled?: () => void;
}

export interface Publisher {
  /**
   * Whether the connection is up as far as we know. A publish made while it is down would be
   * sent after the reconnect, ahead of the spool's older events: the sink spools instead.
   */
  readonly connected: boolean;
  /** Publishes the entries; `onSettled` (and the publisher's own) is called once every one is settled. */
  send(entries: Entry[], onSettled?: () => void): Batch;
  /** Settles the entries still waiting for their acknowledgement as not taken. */
  fail(entries: Iterable<Entry>): void;
  close(): void;
}

/** The Nats-Msg-Id of an event: the uuid of its name `auditEvents/<uuid>` (JetStream's de-duplication key). */
export const msgIdOf = (event: AuditEvent) => event.name.slice(event.name.lastIndexOf("/") + 1);

export function createPublisher(deps: {
  nc: NatsConnection;
  topology: AuditTopology;
  ackTimeoutMs: number;
  /** A batch settled. */
  onSettled: () => void;
  /** NATS did not take an event, for a reason of its own (worth a retry later). */
  onFailure: (why: unknown) => void;
  /** The connection went down (what waited for an acknowledgement is settled as not taken) or came back. */
  onConnection: (up: boolean) => void;
}): Publisher {
  const { nc, topology, onFailure } = deps;
  const pending = new Map<string, Entry>();
  const open = new Set<Batch>();
  let nextToken = 0;
  const inbox = createInbox();
  const sub = nc.subscribe(`${inbox}.*`, { callback: (error, msg) => (error ? undefined : onAck(msg)) });

  function onAck(msg: Msg) {
    const entry = pending.get(msg.subject.slice(inbox.length + 1));
    if (!entry) return; // failed already (timed out, disconnected)
    pending.delete(entry.token!);
    const refusal = refusalOf(msg);
    if (refusal?.permanent) entry.poison = refusal.reason;
    else if (refusal) onFailure(refusal.reason);
    settle(entry, refusal === undefined);
  }

  function settle(entry: Entry, acked: boolean) {
    entry.acked = acked;
    const batch = entry.batch!;
    if (--batch.remaining > 0) return;
    batch.settled = true;
    open.delete(batch);
    batch.onSettled?.();
    deps.onSettled();
  }

  function fail(entries: Iterable<Entry>) {
    for (const entry of entries) if (entry.token !== undefined && pending.delete(entry.token)) settle(entry, false);
  }

  // No acknowledgement in time: the event is treated as not taken (a late copy is deduplicated).
  const sweeper = setInterval(() => {
    const before = Date.now() - deps.ackTimeoutMs;
    for (const batch of open) {
      if (batch.sentAt >= before) continue;
      onFailure(new Error(`no JetStream acknowledgement within ${deps.ackTimeoutMs} ms`));
      fail(batch.entries);
    }
  }, Math.min(1_000, deps.ackTimeoutMs));
  (sweeper as { unref?: () => void }).unref?.();

  let connected = !nc.isClosed();
  const statuses = nc.status();
  let statusSeen = 0;
  void (async () => {
    for await (const status of statuses) {
      if (status.type === "disconnect" || status.type === "close") {
        connected = false;
        fail([...pending.values()]);
      } else if (status.type === "reconnect") connected = true;
      else continue;
      statusSeen++;
      deps.onConnection(connected);
    }
  })();
  // Connected as far as we know; a connection down at start answers no flush.
  void nc.flush().catch(() => {
    if (statusSeen > 0) return;
    connected = false;
    deps.onConnection(false);
  });

  return {
    get connected() { return connected; },
    send(entries, onSettled) {
      const batch: Batch = { entries, remaining: entries.length, settled: entries.length === 0, sentAt: Date.now(), onSettled };
      if (batch.settled) onSettled?.();
      else open.add(batch);
      for (const entry of entries) {
        const token = (nextToken++).toString(36);
        entry.token = token;
        entry.batch = batch;
        entry.acked = false;
        entry.poison = undefined;
        pending.set(token, entry);
        try {
          entry.bytes ??= encodeAuditEvent(entry.event);
          const subject = topology.eventsSubject(entry.event.tenant);
          if (subject.length > maxSubjectLength) throw new Error(`a subject of ${subject.length} characters: longer than NATS's control line takes`);
          nc.publish(subject, entry.bytes, { reply: `${inbox}.${token}`, headers: msgIdHeader(msgIdOf(entry.event)) });
        } catch (error) {
          // The connection's state is NATS's; anything else thrown here is the event's own (larger
          // than max_payload, a subject NATS refuses, not writable by the codec): trying again cannot help.
          if (error instanceof ClosedConnectionError || error instanceof DrainingConnectionError) onFailure(error);
          else entry.poison = String(error);
          fail([entry]);
        }
      }
      return batch;
    },
    fail,
    close() {
      clearInterval(sweeper);
      (statuses as { stop?: () => void }).stop?.();
      sub.unsubscribe();
    },
  };
}

const headerStart = "NATS/1.0\r\nNats-Msg-Id: ";
const textEncoder = new TextEncoder();

/**
 * The one header of an event, encoded as MsgHdrs.encode() would (`NATS/1.0`, then `Key: value`
 * lines, then an empty line): publish() only calls encode() on the headers it is given, and a
 * MsgHdrs per event builds a Map, an array and a string line by line for one header (a small
 * saving, under a microsecond an event). A value MsgHdrs would refuse (a CR or LF) is refused
 * here too: that event is poison.
 */
function msgIdHeader(id: string): MsgHdrs {
  if (/[\r\n]/.test(id)) throw new Error("a Nats-Msg-Id cannot hold CR or LF");
  const bytes = textEncoder.encode(`${headerStart}${id.trim()}\r\n\r\n`);
  return { encode: () => bytes } as unknown as MsgHdrs;
}

/**
 * The server closes a connection whose protocol line passes max_control_line (4 KiB by default):
 * a publish with a longer subject (an absurd tenant) would take the connection down at every
 * retry. 1024 characters are at most 3 KiB in UTF-8, with room for the reply subject and sizes.
 */
const maxSubjectLength = 1024;

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

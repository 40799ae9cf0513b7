/**
 * The AuditEvent's binary encoding without reflection: the sink encodes one event per RPC, and
 * toBinary walks the schema's descriptors for every field of every event (about half of what
 * publishing an event cost). This writes the same bytes as toBinary (fields in number order,
 * proto3 defaults left out; event-codec.test.ts compares them over generated events), and knows
 * which fields it writes: `encodedFields` lets that test fail the day AuditEvent, Actor or
 * AuditOutcome gains a field this file does not write.
 *
 * Runtime-neutral: the Deno gateway's sink imports it too.
 */
// @deno-types="../../gen/jobmesh/v1/audit_pb.d.ts"
import type { Actor, AuditEvent, AuditOutcome } from "../../gen/jobmesh/v1/audit_pb.js";

/** The field numbers this encoder writes, by message type name (the test compares them with the schemas). */
export const encodedFields: Readonly<Record<string, readonly number[]>> = {
  "jobmesh.v1.AuditEvent": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
  "jobmesh.v1.Actor": [1, 2, 3, 4],
  "jobmesh.v1.AuditOutcome": [1, 2],
  "google.protobuf.Timestamp": [1, 2],
  "google.protobuf.Duration": [1, 2],
};

/** The byte counts of the event's nested messages (-1 for one not set), needed before their bytes. */
type Sizes = { actor: number; outcome: number; eventTime: number; duration: number };

/**
 * The event in protobuf binary, byte for byte what toBinary(AuditEventSchema, event) gives.
 * Two passes over the event, sizes then bytes, into one buffer of the exact size: BinaryWriter
 * collects bytes in a JS array and copies each nested message, which cost as much as toBinary.
 */
export function encodeAuditEvent(event: AuditEvent): Uint8Array {
  const sizes: Sizes = {
    actor: event.actor ? actorSize(event.actor) : -1,
    outcome: event.outcome ? outcomeSize(event.outcome) : -1,
    eventTime: event.eventTime ? secondsNanosSize(event.eventTime.seconds, event.eventTime.nanos) : -1,
    duration: event.duration ? secondsNanosSize(event.duration.seconds, event.duration.nanos) : -1,
  };
  const out = new Out(allocate(eventSize(event, sizes)));
  out.str(1, event.name);
  if (event.sequence !== 0n) out.tag(2, 0).int64(event.sequence);
  out.str(3, event.tenant);
  if (event.actor) writeActor(out.tag(4, 2).varint(sizes.actor), event.actor);
  out.str(5, event.action);
  out.str(6, event.resource);
  if (event.outcome) writeOutcome(out.tag(7, 2).varint(sizes.outcome), event.outcome);
  out.str(8, event.requestId);
  out.str(9, event.traceId);
  if (event.eventTime) writeSecondsNanos(out.tag(10, 2).varint(sizes.eventTime), event.eventTime.seconds, event.eventTime.nanos);
  out.str(11, event.prevHash);
  out.str(12, event.hash);
  out.str(13, event.resourceType);
  out.str(14, event.clientAddress);
  out.str(15, event.userAgent);
  if (event.duration) writeSecondsNanos(out.tag(16, 2).varint(sizes.duration), event.duration.seconds, event.duration.nanos);
  out.str(17, event.request);
  out.str(18, event.recorder);
  if (out.pos !== out.buf.length) throw new Error(`audit event encoder: wrote ${out.pos} of ${out.buf.length} bytes`);
  return out.buf;
}

/**
 * Events are cut from shared 64 KiB slabs: a Uint8Array of a few hundred bytes has its own
 * off-heap store, and allocating one cost half of encoding an event. A slab is never written
 * twice (a full one is left to the events that hold views of it), so each event's bytes stay its
 * own; a slab lives while one of its events does, a few hundred events at most.
 */
const slabSize = 64 * 1024;
let slab = new Uint8Array(slabSize);
let slabUsed = 0;

function allocate(size: number): Uint8Array {
  if (size > slabSize / 16) return new Uint8Array(size);
  if (slabUsed + size > slabSize) {
    slab = new Uint8Array(slabSize);
    slabUsed = 0;
  }
  const bytes = slab.subarray(slabUsed, slabUsed + size);
  slabUsed += size;
  return bytes;
}

function eventSize(event: AuditEvent, sizes: Sizes): number {
  let n = strSize(event.name) + strSize(event.tenant) + strSize(event.action) + strSize(event.resource) + strSize(event.requestId);
  n += strSize(event.traceId) + strSize(event.prevHash) + strSize(event.hash) + strSize(event.resourceType) + strSize(event.clientAddress);
  n += strSize(event.userAgent) + strSize(event.request) + strSize(event.recorder);
  if (event.sequence !== 0n) n += 1 + int64Size(event.sequence);
  // Tags 4, 7, 10 and 16 take one byte (16 one more, below), then the length and the message.
  n += messageSize(sizes.actor) + messageSize(sizes.outcome) + messageSize(sizes.eventTime) + messageSize(sizes.duration);
  // Fields 16, 17 and 18 have two-byte tags.
  return n + (event.duration ? 1 : 0) + (event.request !== "" ? 1 : 0) + (event.recorder !== "" ? 1 : 0);
}

const messageSize = (size: number) => (size < 0 ? 0 : 1 + varintSize(size) + size);

function actorSize(actor: Actor): number {
  let n = strSize(actor.subject) + strSize(actor.credentialHint);
  if (actor.kind !== 0) n += 1 + int32Size(actor.kind);
  for (const role of actor.roles) n += 1 + varintSize(utf8Length(role)) + utf8Length(role);
  return n;
}

function writeActor(out: Out, actor: Actor) {
  out.str(1, actor.subject);
  if (actor.kind !== 0) out.tag(2, 0).int32(actor.kind);
  for (const role of actor.roles) out.tag(3, 2).utf8(role);
  out.str(4, actor.credentialHint);
}

function outcomeSize(outcome: AuditOutcome): number {
  return (outcome.code !== 0 ? 1 + int32Size(outcome.code) : 0) + strSize(outcome.message);
}

function writeOutcome(out: Out, outcome: AuditOutcome) {
  if (outcome.code !== 0) out.tag(1, 0).int32(outcome.code);
  out.str(2, outcome.message);
}

/** A Timestamp or a Duration: the same two fields. */
function secondsNanosSize(seconds: bigint, nanos: number): number {
  return (seconds !== 0n ? 1 + int64Size(seconds) : 0) + (nanos !== 0 ? 1 + int32Size(nanos) : 0);
}

function writeSecondsNanos(out: Out, seconds: bigint, nanos: number) {
  if (seconds !== 0n) out.tag(1, 0).int64(seconds);
  if (nanos !== 0) out.tag(2, 0).int32(nanos);
}

/** A string field's bytes with its tag (one byte: every string field this file writes by strSize is numbered below 16). */
function strSize(value: string): number {
  if (value === "") return 0;
  const n = utf8Length(value);
  return 1 + varintSize(n) + n;
}

function varintSize(value: number): number {
  let n = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 128);
    n++;
  }
  return n;
}

const maxSafe = BigInt(Number.MAX_SAFE_INTEGER);

/** A negative int32 (or enum) is written sign-extended to 64 bits: ten bytes. */
const int32Size = (value: number) => (value < 0 ? 10 : varintSize(value));
const int64Size = (value: bigint) => (value < 0n ? 10 : value <= maxSafe ? varintSize(Number(value)) : bigVarintSize(value));

function bigVarintSize(value: bigint): number {
  let n = 1;
  while (value >= 0x80n) {
    value >>= 7n;
    n++;
  }
  return n;
}

/** UTF-8 length as TextEncoder counts it: a lone surrogate becomes U+FFFD (3 bytes). */
function utf8Length(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if ((c & 0xfc00) === 0xd800 && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/** A cursor over a buffer of the exact size. */
class Out {
  pos = 0;
  readonly buf: Uint8Array;
  constructor(buf: Uint8Array) {
    this.buf = buf;
  }

  tag(field: number, wireType: number): this {
    return this.varint((field << 3) | wireType);
  }

  varint(value: number): this {
    while (value >= 0x80) {
      this.buf[this.pos++] = (value & 0x7f) | 0x80;
      value = Math.floor(value / 128);
    }
    this.buf[this.pos++] = value;
    return this;
  }

  int32(value: number): this {
    return value < 0 ? this.bigVarint(BigInt.asUintN(64, BigInt(value))) : this.varint(value);
  }

  int64(value: bigint): this {
    if (value >= 0n && value <= maxSafe) return this.varint(Number(value));
    return this.bigVarint(BigInt.asUintN(64, value));
  }

  bigVarint(value: bigint): this {
    while (value >= 0x80n) {
      this.buf[this.pos++] = Number(value & 0x7fn) | 0x80;
      value >>= 7n;
    }
    this.buf[this.pos++] = Number(value);
    return this;
  }

  str(field: number, value: string) {
    if (value !== "") this.tag(field, 2).utf8(value);
  }

  /** The length, then the UTF-8 bytes (what TextEncoder writes: a lone surrogate as U+FFFD). */
  utf8(text: string): this {
    this.varint(utf8Length(text));
    const buf = this.buf;
    let pos = this.pos;
    for (let i = 0; i < text.length; i++) {
      let c = text.charCodeAt(i);
      if (c < 0x80) {
        buf[pos++] = c;
        continue;
      }
      if (c < 0x800) {
        buf[pos++] = 0xc0 | (c >> 6);
        buf[pos++] = 0x80 | (c & 0x3f);
        continue;
      }
      if ((c & 0xfc00) === 0xd800 && i + 1 < text.length && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        c = 0x10000 + ((c - 0xd800) << 10) + (text.charCodeAt(++i) - 0xdc00);
        buf[pos++] = 0xf0 | (c >> 18);
        buf[pos++] = 0x80 | ((c >> 12) & 0x3f);
      } else {
        if ((c & 0xf800) === 0xd800) c = 0xfffd; // a lone surrogate
        buf[pos++] = 0xe0 | (c >> 12);
      }
      buf[pos++] = 0x80 | ((c >> 6) & 0x3f);
      buf[pos++] = 0x80 | (c & 0x3f);
    }
    this.pos = pos;
    return this;
  }
}

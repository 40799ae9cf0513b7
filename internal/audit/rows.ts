/**
 * audit_events rows and AuditEvent messages, both ways. The chain hashes the event exactly as
 * eventOfRow() gives it back, so the store first turns what arrived into a row (rowOfEvent:
 * times to the microsecond, NULs replaced, the tenant and id as stored), hashes
 * eventOfRow(row), and inserts that row: reading it back can never give other bytes.
 */
import { create } from "@bufbuild/protobuf";
import { DurationSchema, TimestampSchema, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { AuditCheckpointSchema, AuditEventSchema, type AuditCheckpoint, type AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import type { Queryable } from "../db/index.ts";

/** An audit_events row as auditEventColumns selects it (bigints and times as exact text). */
export interface AuditEventRow {
  tenant_id: string;
  sequence: string;
  event_id: string;
  /** event_time in microseconds since the epoch. */
  event_time_us: string;
  actor_subject: string;
  actor_kind: number;
  actor_roles: string[];
  credential_hint: string;
  action: string;
  resource: string;
  resource_type: string;
  code: number;
  message: string;
  request_id: string;
  trace_id: string;
  client_address: string;
  user_agent: string;
  duration_us: string;
  request: string;
  recorder: string;
  prev_hash: string;
  hash: string;
}

/**
 * The select list that yields an AuditEventRow (from audit_events). Columns keep their names and
 * types (pg gives a bigint as a string): an alias named like a column but of another type would
 * be what a bare ORDER BY sequence sorts by.
 */
export const auditEventColumns = `tenant_id, sequence, event_id, (extract(epoch FROM event_time) * 1000000)::bigint::text AS event_time_us,
  actor_subject, actor_kind, actor_roles, credential_hint, action, resource, resource_type, code, message, request_id, trace_id,
  client_address, user_agent, duration_us, request, recorder, prev_hash, hash`;

const micro = 1_000_000n;

/** A Timestamp from microseconds since the epoch (nanos a multiple of 1000, never negative). */
export function timestampOfMicros(us: bigint): Timestamp {
  let seconds = us / micro;
  let rest = us % micro;
  if (rest < 0n) {
    seconds -= 1n;
    rest += micro;
  }
  return create(TimestampSchema, { seconds, nanos: Number(rest) * 1000 });
}

/** Microseconds since the epoch of a Timestamp, below the microsecond cut. */
export function microsOfTimestamp(t: Timestamp): bigint {
  return t.seconds * micro + BigInt(Math.floor(t.nanos / 1000));
}

/** RFC 3339 with six fraction digits: exact input for a timestamptz. */
export function isoOfMicros(us: bigint): string {
  const ms = us / 1000n - (us % 1000n < 0n ? 1n : 0n);
  const sub = Number(us - ms * 1000n);
  return new Date(Number(ms)).toISOString().slice(0, -1) + String(sub).padStart(3, "0") + "Z";
}

function durationOfMicros(us: bigint): Duration {
  // Truncation keeps seconds and nanos of one sign, as Duration requires.
  return create(DurationSchema, { seconds: us / micro, nanos: Number(us % micro) * 1000 });
}

/** The AuditEvent a row stands for; the one function the chain and every reader use. */
export function eventOfRow(row: AuditEventRow): AuditEvent {
  return create(AuditEventSchema, {
    name: `auditEvents/${row.event_id}`,
    sequence: BigInt(row.sequence),
    tenant: row.tenant_id,
    actor: { subject: row.actor_subject, kind: row.actor_kind, roles: row.actor_roles, credentialHint: row.credential_hint },
    action: row.action,
    resource: row.resource,
    outcome: { code: row.code, message: row.message },
    requestId: row.request_id,
    traceId: row.trace_id,
    eventTime: timestampOfMicros(BigInt(row.event_time_us)),
    prevHash: row.prev_hash,
    hash: row.hash,
    resourceType: row.resource_type,
    clientAddress: row.client_address,
    userAgent: row.user_agent,
    duration: durationOfMicros(BigInt(row.duration_us)),
    request: row.request,
    recorder: row.recorder,
  });
}

// Postgres text cannot hold U+0000; what arrives with one is stored (and hashed) with U+FFFD.
const text = (s: string) => (s.includes("\u0000") ? s.replaceAll("\u0000", "\uFFFD") : s);
const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** True for a UUID in its usual text form. */
export const isUuid = (s: string) => uuidPattern.test(s);

// Timestamps Postgres and protobuf both hold (1970..9999); anything else takes the arrival time.
const latestSeconds = 253_402_300_799n;
const int16 = (n: number) => (Number.isInteger(n) && n >= 0 && n <= 32767 ? n : 0);

/**
 * The row an arrived event becomes, with sequence, prev_hash and hash still to assign: tenant and
 * event id as the store decided them, times cut to the microsecond, a missing or impossible
 * event_time replaced by when the stream received the event (`arrivalUs`).
 */
export function rowOfEvent(event: AuditEvent, at: { tenantId: string; eventId: string; arrivalUs: bigint }): AuditEventRow {
  const t = event.eventTime;
  const timeUs = t && t.seconds >= 0n && t.seconds <= latestSeconds ? microsOfTimestamp(t) : at.arrivalUs;
  const d = event.duration;
  const durationUs = d ? d.seconds * micro + BigInt(Math.trunc(d.nanos / 1000)) : 0n;
  const fitsBigint = durationUs < 2n ** 63n && durationUs >= -(2n ** 63n);
  return {
    tenant_id: at.tenantId.toLowerCase(),
    sequence: "0",
    event_id: at.eventId.toLowerCase(),
    event_time_us: timeUs.toString(),
    actor_subject: text(event.actor?.subject ?? ""),
    actor_kind: int16(event.actor?.kind ?? 0),
    actor_roles: (event.actor?.roles ?? []).map(text),
    credential_hint: text(event.actor?.credentialHint ?? ""),
    action: text(event.action),
    resource: text(event.resource),
    resource_type: text(event.resourceType),
    code: event.outcome?.code ?? 0,
    message: text(event.outcome?.message ?? ""),
    request_id: text(event.requestId),
    trace_id: text(event.traceId),
    client_address: text(event.clientAddress),
    user_agent: text(event.userAgent),
    duration_us: (fitsBigint ? durationUs : 0n).toString(),
    request: text(event.request),
    recorder: text(event.recorder),
    prev_hash: "",
    hash: "",
  };
}

/** A tenant's chain head after a batch: its last sequence and hash. */
export interface ChainHead {
  tenantId: string;
  sequence: bigint;
  hash: string;
}

/**
 * Appends chained rows in ONE statement (arrays unnested): the events, their ids (the dedupe
 * record; a repeated id fails the statement) and the moved chain heads. Run it inside the
 * store's transaction, under SET LOCAL ROLE jobmesh_audit_appender, after the heads were locked.
 */
export async function appendAuditEventRows(db: Queryable, rows: AuditEventRow[], heads: ChainHead[]): Promise<void> {
  const column = <K extends keyof AuditEventRow>(k: K) => rows.map((r) => r[k]);
  await db.query(
    `WITH ids AS (
       INSERT INTO audit_event_ids (event_id, tenant_id, sequence) SELECT * FROM unnest($3::uuid[], $1::uuid[], $2::bigint[])
     ), heads AS (
       UPDATE audit_chain_heads h SET sequence = v.s, hash = v.h FROM unnest($23::uuid[], $24::bigint[], $25::text[]) AS v(t, s, h) WHERE h.tenant_id = v.t
     )
     INSERT INTO audit_events (tenant_id, sequence, event_id, event_time, actor_subject, actor_kind, actor_roles, credential_hint, action,
       resource, resource_type, code, message, request_id, trace_id, client_address, user_agent, duration_us, request, recorder, prev_hash, hash)
     SELECT t, s, e, et::timestamptz, sub, kind, ARRAY(SELECT jsonb_array_elements_text(roles)), hint, act, res, rtype, code, msg, rid, tid,
       addr, ua, dur, req, rec, prev, h
     FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::smallint[], $7::jsonb[], $8::text[], $9::text[], $10::text[],
       $11::text[], $12::int[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], $18::bigint[], $19::text[], $20::text[],
       $21::text[], $22::text[])
       AS v(t, s, e, et, sub, kind, roles, hint, act, res, rtype, code, msg, rid, tid, addr, ua, dur, req, rec, prev, h)`,
    [
      column("tenant_id"),
      column("sequence"),
      column("event_id"),
      rows.map((r) => isoOfMicros(BigInt(r.event_time_us))),
      column("actor_subject"),
      column("actor_kind"),
      rows.map((r) => JSON.stringify(r.actor_roles)),
      column("credential_hint"),
      column("action"),
      column("resource"),
      column("resource_type"),
      column("code"),
      column("message"),
      column("request_id"),
      column("trace_id"),
      column("client_address"),
      column("user_agent"),
      column("duration_us"),
      column("request"),
      column("recorder"),
      column("prev_hash"),
      column("hash"),
      heads.map((h) => h.tenantId),
      heads.map((h) => h.sequence.toString()),
      heads.map((h) => h.hash),
    ],
  );
}

/** An audit_checkpoints row as checkpointColumns selects it. */
export interface AuditCheckpointRow {
  tenant_id: string;
  sequence: string;
  first_sequence: string;
  hash: string;
  checkpoint_time_us: string;
  event_hashes: Buffer;
  key_id: string;
  signature: Buffer;
}

/** The select list that yields an AuditCheckpointRow (checkpoint_time exact to the microsecond). */
export const checkpointColumns = `tenant_id, sequence, first_sequence, hash,
  (extract(epoch FROM checkpoint_time) * 1000000)::bigint::text AS checkpoint_time_us, event_hashes, key_id, signature`;

/** The AuditCheckpoint a row stands for (its signature covers these exact bytes). */
export function checkpointOfRow(row: AuditCheckpointRow): AuditCheckpoint {
  return create(AuditCheckpointSchema, {
    tenant: row.tenant_id,
    firstSequence: BigInt(row.first_sequence),
    sequence: BigInt(row.sequence),
    hash: row.hash,
    checkpointTime: timestampOfMicros(BigInt(row.checkpoint_time_us)),
    eventHashes: new Uint8Array(row.event_hashes),
    keyId: row.key_id,
    signature: new Uint8Array(row.signature),
  });
}

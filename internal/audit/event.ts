/**
 * The one builder of an AuditEvent from the facts of a call, shared by the services' recorder
 * (internal/rpc/audit.ts) and the gateway's record of a call it refuses at the edge
 * (internal/gateway/edge-audit.ts): the actor and tenant, the event's time and duration, the
 * user agent and every other bound are coded here once. Pure and transport-free, so the Deno
 * gateway imports it as it is.
 *
 * Every free-text field is capped (the request at 8 KiB by its recorder, the rest at 1 KiB here),
 * so an event always fits far under NATS's max_payload (1 MiB): an unauthenticated call with a
 * 2 MiB name is refused before validation, and its event must still be publishable.
 */
// @deno-types="../../gen/jobmesh/v1/audit_pb.d.ts"
import type { AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
// @deno-types="../../gen/jobmesh/v1/auth_pb.d.ts"
import { PrincipalKind } from "../../gen/jobmesh/v1/auth_pb.js";

/**
 * What a handler of a public method (Login, RefreshToken, ExchangeApiKey) knows about who is
 * calling before its domain call decides: set early, so a refused attempt is still attributed to
 * its tenant and to the credential it tried (never the secret).
 */
export interface AuditAttribution {
  tenantId?: string;
  subject?: string;
  /** Such as "email:someone@example.com". */
  credentialHint?: string;
}

/** The caller identity admitted (internal/rpc/context.ts Caller). */
export interface AdmittedCaller {
  tenantId: string;
  subject: string;
  roles: readonly string[];
}

/** Who a call claimed to be, as far as identity got (internal/rpc/context.ts AttemptedCaller). */
export type ClaimedCaller =
  | { kind: "anonymous" }
  | { kind: "token" | "api_key"; subject?: string; tenantId?: string; roles?: readonly string[]; credentialHint: string };

/** Longest user agent kept, in characters (the contract's bound). */
export const maxUserAgentLength = 256;
/** Longest free-text field kept (action, resource, message, hints, each role…), in UTF-8 bytes. */
export const maxFieldBytes = 1024;
/** Most roles an actor keeps: a role list is the tenant's, but the event's size must not depend on it. */
export const maxRoles = 32;

/** Everything an event is made of, gathered by a recorder. */
export interface CallFacts {
  /** The event id (a v4 UUID). */
  id: string;
  /** "jobmesh.v1.JobService.CreateJob". */
  action: string;
  caller?: AdmittedCaller;
  attempted?: ClaimedCaller;
  attribution?: AuditAttribution;
  /** Undefined on success; else the code and message the client saw (ConnectError's rawMessage). */
  error?: { code: number; rawMessage: string };
  resource: string;
  resourceType: string;
  requestId: string;
  traceId: string;
  /** When the call arrived. */
  startTime: Date;
  /** Wall time of the call, in milliseconds (fractions kept: the event holds microseconds). */
  durationMs: number;
  clientAddress: string;
  userAgent: string;
  /** The redacted request in proto3 JSON, already bounded by the recorder ("" when not read). */
  request: string;
  recorder: string;
}

/**
 * The AuditEvent of one call, as published: sequence, prev_hash and hash stay empty (the store
 * assigns them). Built as a literal, every field of every message set with its $typeName (what
 * create() would give): create() walks the schema for every field, once per RPC.
 */
export function auditEventOf(facts: CallFacts): AuditEvent {
  const { actor, tenant } = actorOf(facts);
  const micros = Math.max(0, Math.round(facts.durationMs * 1000));
  const resource = capped(facts.resource);
  const ms = facts.startTime.getTime();
  const roles = actor.roles.length > maxRoles ? actor.roles.slice(0, maxRoles) : actor.roles;
  return {
    $typeName: "jobmesh.v1.AuditEvent",
    name: `auditEvents/${facts.id}`,
    sequence: 0n,
    tenant: capped(tenant),
    actor: { $typeName: "jobmesh.v1.Actor", subject: capped(actor.subject), kind: actor.kind, roles: roles.map((r) => capped(r)), credentialHint: capped(actor.credentialHint) },
    action: capped(facts.action),
    resource,
    outcome: { $typeName: "jobmesh.v1.AuditOutcome", code: facts.error ? facts.error.code : 0, message: facts.error ? capped(facts.error.rawMessage) : "" },
    requestId: capped(facts.requestId),
    traceId: capped(facts.traceId),
    // Milliseconds: a Date has no more, and the store's timestamptz gives back exactly this.
    eventTime: { $typeName: "google.protobuf.Timestamp", seconds: BigInt(Math.floor(ms / 1000)), nanos: (((ms % 1000) + 1000) % 1000) * 1_000_000 },
    prevHash: "",
    hash: "",
    resourceType: resource ? capped(facts.resourceType) : "",
    clientAddress: capped(facts.clientAddress),
    userAgent: cappedUserAgent(facts.userAgent),
    // Microsecond precision, as the store keeps it (duration_us).
    duration: { $typeName: "google.protobuf.Duration", seconds: BigInt(Math.floor(micros / 1_000_000)), nanos: (micros % 1_000_000) * 1000 },
    request: facts.request,
    recorder: capped(facts.recorder),
  };
}

/** At most maxUserAgentLength code points: never half a surrogate pair. */
function cappedUserAgent(text: string): string {
  // As many UTF-16 units as the bound: no more code points either, nothing to cut.
  if (text.length <= maxUserAgentLength) return text;
  return [...text.slice(0, 2 * maxUserAgentLength)].slice(0, maxUserAgentLength).join("");
}

const cutMarker = "…[cut]";
const cutMarkerBytes = new TextEncoder().encode(cutMarker).length;

/**
 * `text` if it holds at most `maxBytes` UTF-8 bytes; else its start, cut on a character
 * boundary, ending with a marker that says so. A huge text is sliced before it is encoded: a
 * UTF-16 code unit is at most 3 UTF-8 bytes, so only the start is ever encoded.
 */
export function capped(text: string, maxBytes = maxFieldBytes): string {
  if (text.length * 3 <= maxBytes) return text;
  const bytes = new TextEncoder().encode(text.slice(0, maxBytes + 1));
  if (bytes.length <= maxBytes && text.length <= maxBytes + 1) return text;
  let cut = maxBytes - cutMarkerBytes;
  while (cut > 0 && (bytes[cut]! & 0xc0) === 0x80) cut--; // not inside a UTF-8 sequence
  return new TextDecoder().decode(bytes.subarray(0, cut)) + cutMarker;
}

/** USER for "users/…", API_KEY for "apiKeys/…", SYSTEM for "system/…". */
export function principalKindOf(subject: string): PrincipalKind {
  if (subject.startsWith("users/")) return PrincipalKind.USER;
  if (subject.startsWith("apiKeys/")) return PrincipalKind.API_KEY;
  if (subject.startsWith("system/")) return PrincipalKind.SYSTEM;
  return PrincipalKind.UNSPECIFIED;
}

/**
 * Who acted, best source first: the caller identity admitted; else what the call claimed as far
 * as identity got; else what a public method's handler attributed it to; else anonymous.
 */
function actorOf(facts: CallFacts) {
  const { caller, attempted, attribution } = facts;
  const claimed = attempted && attempted.kind !== "anonymous" ? attempted : undefined;
  if (caller) {
    const actor = { subject: caller.subject, kind: principalKindOf(caller.subject), roles: caller.roles, credentialHint: claimed?.credentialHint ?? "" };
    return { actor, tenant: caller.tenantId };
  }
  if (claimed) {
    const subject = claimed.subject ?? "";
    // A key is a key even before it verifies; a token could act for a user or a key.
    const kind = subject ? principalKindOf(subject) : claimed.kind === "api_key" ? PrincipalKind.API_KEY : PrincipalKind.UNSPECIFIED;
    return { actor: { subject, kind, roles: claimed.roles ?? [], credentialHint: claimed.credentialHint }, tenant: claimed.tenantId ?? "" };
  }
  if (attribution) {
    const subject = attribution.subject ?? "";
    return { actor: { subject, kind: principalKindOf(subject), roles: [] as readonly string[], credentialHint: attribution.credentialHint ?? "" }, tenant: attribution.tenantId ?? "" };
  }
  return { actor: { subject: "", kind: PrincipalKind.UNSPECIFIED, roles: [] as readonly string[], credentialHint: "" }, tenant: "" };
}

/**
 * The one builder of an AuditEvent from the facts of a call, shared by the services' recorder
 * (internal/rpc/audit.ts) and the gateway's record of a call it refuses at the edge
 * (internal/gateway/edge-audit.ts): the actor and tenant, the event's time and duration, the
 * user agent and every other bound are coded here once. Pure and transport-free, so the Deno
 * gateway imports it as it is.
 */
import { create } from "@bufbuild/protobuf";
// @deno-types="../../gen/jobmesh/v1/audit_pb.d.ts"
import { AuditEventSchema, type AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
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

/** The AuditEvent of one call, as published: sequence, prev_hash and hash stay empty (the store assigns them). */
export function auditEventOf(facts: CallFacts): AuditEvent {
  const { actor, tenant } = actorOf(facts);
  const micros = Math.max(0, Math.round(facts.durationMs * 1000));
  return create(AuditEventSchema, {
    name: `auditEvents/${facts.id}`,
    tenant,
    actor,
    action: facts.action,
    resource: facts.resource,
    resourceType: facts.resource ? facts.resourceType : "",
    outcome: facts.error ? { code: facts.error.code, message: facts.error.rawMessage } : { code: 0, message: "" },
    requestId: facts.requestId,
    traceId: facts.traceId,
    // Milliseconds: a Date has no more, and the store's timestamptz gives back exactly this.
    eventTime: { seconds: BigInt(Math.floor(facts.startTime.getTime() / 1000)), nanos: (((facts.startTime.getTime() % 1000) + 1000) % 1000) * 1_000_000 },
    clientAddress: facts.clientAddress,
    // By code points: never half a surrogate pair.
    userAgent: [...facts.userAgent].slice(0, maxUserAgentLength).join(""),
    // Microsecond precision, as the store keeps it (duration_us).
    duration: { seconds: BigInt(Math.floor(micros / 1_000_000)), nanos: (micros % 1_000_000) * 1000 },
    request: facts.request,
    recorder: facts.recorder,
  });
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
    const actor = { subject: caller.subject, kind: principalKindOf(caller.subject), roles: [...caller.roles], credentialHint: claimed?.credentialHint ?? "" };
    return { actor, tenant: caller.tenantId };
  }
  if (claimed) {
    const subject = claimed.subject ?? "";
    // A key is a key even before it verifies; a token could act for a user or a key.
    const kind = subject ? principalKindOf(subject) : claimed.kind === "api_key" ? PrincipalKind.API_KEY : PrincipalKind.UNSPECIFIED;
    return { actor: { subject, kind, roles: [...(claimed.roles ?? [])], credentialHint: claimed.credentialHint }, tenant: claimed.tenantId ?? "" };
  }
  if (attribution) {
    const subject = attribution.subject ?? "";
    return { actor: { subject, kind: principalKindOf(subject), roles: [] as string[], credentialHint: attribution.credentialHint ?? "" }, tenant: attribution.tenantId ?? "" };
  }
  return { actor: { subject: "", kind: PrincipalKind.UNSPECIFIED, roles: [] as string[], credentialHint: "" }, tenant: "" };
}

/**
 * What the gateway records of a call it refuses at the edge (401, 403, 429): the call never
 * reaches a service, so no service's audit interceptor sees it, and the gateway writes its one
 * audit event instead. A call the gateway admits is recorded by the service, never here, so
 * every call has exactly one event.
 *
 * The event is built by the services' own builder (internal/audit/event.ts): the full RPC name
 * as the action, the actor as far as the edge learnt it (never the secret), the code and message
 * the client got, and the request left empty (the body was not read).
 */
import type { Code } from "@connectrpc/connect";
import { decodeJwt } from "jose";
// @deno-types="../../gen/jobmesh/v1/audit_pb.d.ts"
import type { AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import { auditEventOf, type CallFacts } from "../audit/event.ts";
import { apiKeyHintOf, credentialOf } from "../auth/credentials.ts";
import type { EdgeCaller } from "./edge-auth.ts";

/** The recorder name of every event the gateway writes. */
export const gatewayRecorder = "gateway";

/**
 * The answers the edge refuses with on its own, and records: 401, 403, 429. Not 413, though it
 * shares RESOURCE_EXHAUSTED with 429: a body too large is a bad request, like a 400.
 */
const edgeRefusalStatuses = new Set([401, 403, 429]);

/** True when a call answered `httpStatus` before any backend was called is the gateway's to record. */
export function isEdgeRefusal(httpStatus: number): boolean {
  return edgeRefusalStatuses.has(httpStatus);
}

/** One call refused at the edge, as server.ts knows it when it answers. */
export interface EdgeRefusal {
  /** The method's full name: "jobmesh.v1.PipelineService.GetPipeline". */
  action: string;
  /** The caller whose credential verified (refused for its roles or its rate); undefined when none did. */
  caller: EdgeCaller | undefined;
  /** The request's headers: what credential it presented, its user agent and trace context. */
  headers: Headers;
  code: Code;
  /** The message the client got (ConnectError.rawMessage). */
  message: string;
  /** The client as the gateway sees it (socket peer, or x-forwarded-for from a trusted proxy). */
  clientAddress: string | undefined;
  /** The x-request-id the gateway set or echoed. */
  requestId: string;
  /** How long the gateway held the call before refusing it. */
  durationMs: number;
}

/** What the event takes from outside the refusal: its id, the clock and the trace. */
export interface EdgeAuditContext {
  /** A UUID v4: the event is `auditEvents/<id>`, and its Nats-Msg-Id. */
  id: string;
  /** When the refusal was answered; the event's time is when the call arrived (now − duration). */
  now: Date;
  /** The gateway's own trace (Deno's server span) when it traces; else the client's traceparent is read. */
  activeTraceId: string | undefined;
}

/** The audit event of one edge refusal. Pure: same refusal and context, same event. */
export function edgeAuditEventOf(refusal: EdgeRefusal, context: EdgeAuditContext): AuditEvent {
  // The event's time is when the call arrived, to the millisecond (as every recorder makes it).
  const startTime = new Date(context.now.getTime() - Math.floor(Math.max(0, refusal.durationMs)));
  return auditEventOf({
    id: context.id,
    action: refusal.action,
    ...callerFacts(refusal.caller, refusal.headers),
    error: { code: refusal.code, rawMessage: refusal.message },
    // The body was not read: no resource, no request.
    resource: "",
    resourceType: "",
    requestId: refusal.requestId,
    traceId: context.activeTraceId ?? traceIdOfHeaders(refusal.headers),
    startTime,
    durationMs: refusal.durationMs,
    clientAddress: refusal.clientAddress ?? "",
    userAgent: refusal.headers.get("user-agent") ?? "",
    request: "",
    recorder: gatewayRecorder,
  });
}

/**
 * The caller as the edge learnt it, in the terms the services' identity interceptor records: a
 * verified credential gives subject, tenant and roles; an unverified one only its hint, an API
 * key's public prefix, "unverified" for a token, "malformed" for what cannot be read.
 */
export function callerFacts(caller: EdgeCaller | undefined, headers: Headers): Pick<CallFacts, "caller" | "attempted"> {
  let presented;
  try {
    presented = credentialOf(headers);
  } catch {
    // An authorization header that is not "Bearer <one value>".
    return { attempted: { kind: "token", credentialHint: "malformed" } };
  }
  if (!presented) return { attempted: { kind: "anonymous" } };
  const hint = presented.kind === "api_key" ? apiKeyHintOf(presented.value) : caller ? tokenHintOf(presented.value) : "unverified";
  if (!caller) return { attempted: { kind: presented.kind, credentialHint: hint } };
  return {
    caller: { tenantId: caller.tenantId, subject: caller.subject, roles: caller.roles },
    attempted: { kind: presented.kind, subject: caller.subject, tenantId: caller.tenantId, roles: caller.roles, credentialHint: hint },
  };
}

/**
 * "tokens/<jti>" of a token edge-auth has verified (its signature checked, so its claims are the
 * issuer's): the same hint the services write, naming the token and not holding it.
 */
function tokenHintOf(token: string): string {
  try {
    const { jti } = decodeJwt(token);
    return typeof jti === "string" && jti !== "" ? `tokens/${jti}` : "unverified";
  } catch {
    return "unverified";
  }
}

/** The trace id of a W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>"), or "" without a valid one. */
export function traceIdOfHeaders(headers: Headers): string {
  const match = /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(headers.get("traceparent")?.trim() ?? "");
  return match && !/^0+$/.test(match[1]) ? match[1] : "";
}

/** Where the gateway's events go: the audit sink's record (internal/audit/sink.ts). */
export interface EdgeAuditSink {
  record(event: AuditEvent): void;
}

/**
 * The `recordRefusal` dependency of createGateway: builds the event and hands it to the sink,
 * which publishes it asynchronously (spooling to disk when NATS cannot take it). It never throws
 * into the answer: a refusal is answered whatever becomes of its record.
 */
export function createRefusalRecorder(options: {
  sink: EdgeAuditSink;
  /** The active span's trace id, if the gateway traces (Deno's OpenTelemetry). */
  activeTraceId?: () => string | undefined;
  onFailure?: (error: unknown) => void;
}): (refusal: EdgeRefusal) => void {
  return (refusal) => {
    try {
      options.sink.record(edgeAuditEventOf(refusal, { id: crypto.randomUUID(), now: new Date(), activeTraceId: options.activeTraceId?.() }));
    } catch (error) {
      options.onFailure?.(error);
    }
  };
}

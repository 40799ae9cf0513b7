import assert from "node:assert/strict";
import { toBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
// @deno-types="../../gen/jobmesh/v1/audit_pb.d.ts"
import { AuditEventSchema, type AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
// @deno-types="../../gen/jobmesh/v1/auth_pb.d.ts"
import { PrincipalKind } from "../../gen/jobmesh/v1/auth_pb.js";
import { createRefusalRecorder, edgeAuditEventOf, isEdgeRefusal, traceIdOfHeaders, type EdgeRefusal } from "./edge-audit.ts";
import type { EdgeCaller } from "./edge-auth.ts";

const apiKey = `jmk_ab12cd34_${"Z".repeat(43)}`;
const jti = "0b9c6c1e-2f7e-4a55-9d3f-6a7e2d1c0f11";
/** A JWT-shaped token (header.payload.signature); only its payload is read, after edge-auth verified it. */
const token = [{ alg: "EdDSA", typ: "at+jwt" }, { sub: "users/u1", jti, tenant: "t1" }].map((part) => btoa(JSON.stringify(part)).replace(/=+$/, "")).join(".") + ".c2lnbmF0dXJl";
const viewer: EdgeCaller = { tenantId: "t1", subject: "users/u1", roles: ["viewer"], credentialKey: "t1:users/u1:0" };

function refusal(overrides: Partial<EdgeRefusal> = {}): EdgeRefusal {
  return {
    action: "jobmesh.v1.PipelineService.GetPipeline",
    caller: undefined,
    headers: new Headers({ "user-agent": "curl/8" }),
    code: Code.Unauthenticated,
    message: "this method needs credentials",
    clientAddress: "203.0.113.7",
    requestId: "req-1",
    durationMs: 1.2345,
    ...overrides,
  };
}

const context = { id: "6f1c2b9e-4e1a-4c3b-9a55-0d3f7c2a1b00", now: new Date("2026-12-07T10:00:00.500Z"), activeTraceId: undefined };

/** Every string the event holds, to search for a secret. */
function bytesOf(event: AuditEvent): string {
  return new TextDecoder().decode(toBinary(AuditEventSchema, event));
}

Deno.test("edge audit - no credential: anonymous, unattributed, the code and message the client got", () => {
  const event = edgeAuditEventOf(refusal(), context);
  assert.equal(event.name, `auditEvents/${context.id}`);
  assert.equal(event.tenant, "");
  assert.equal(event.recorder, "gateway");
  assert.equal(event.action, "jobmesh.v1.PipelineService.GetPipeline");
  assert.deepEqual({ code: event.outcome?.code, message: event.outcome?.message }, { code: 16, message: "this method needs credentials" });
  assert.deepEqual({ subject: event.actor?.subject, kind: event.actor?.kind, roles: event.actor?.roles, hint: event.actor?.credentialHint }, { subject: "", kind: PrincipalKind.UNSPECIFIED, roles: [], hint: "" });
  assert.equal(event.clientAddress, "203.0.113.7");
  assert.equal(event.userAgent, "curl/8");
  assert.equal(event.requestId, "req-1");
  assert.equal(event.request, "");
  // Sequence and hashes are the store's to assign.
  assert.deepEqual([event.sequence, event.prevHash, event.hash], [0n, "", ""]);
});

Deno.test("edge audit - time is when the call arrived (ms), duration in whole microseconds", () => {
  const event = edgeAuditEventOf(refusal({ durationMs: 1500.0004 }), context);
  assert.equal(timestampDate(event.eventTime!).toISOString(), "2026-12-07T09:59:59.000Z");
  assert.equal(event.eventTime!.nanos % 1_000_000, 0);
  assert.deepEqual({ seconds: event.duration?.seconds, nanos: event.duration?.nanos }, { seconds: 1n, nanos: 500_000_000 });
  const short = edgeAuditEventOf(refusal({ durationMs: 0.0123456 }), context);
  assert.deepEqual({ seconds: short.duration?.seconds, nanos: short.duration?.nanos }, { seconds: 0n, nanos: 12_000 });
});

Deno.test("edge audit - a refused API key is named by its public prefix, never its secret", () => {
  const event = edgeAuditEventOf(refusal({ headers: new Headers({ "x-api-key": apiKey }) }), context);
  assert.deepEqual({ kind: event.actor?.kind, hint: event.actor?.credentialHint, subject: event.actor?.subject }, { kind: PrincipalKind.API_KEY, hint: "jmk_ab12cd34", subject: "" });
  assert.ok(!bytesOf(event).includes(apiKey.slice(13)));
  const junk = edgeAuditEventOf(refusal({ headers: new Headers({ "x-api-key": "jmk_not-a-key-secret" }) }), context);
  assert.equal(junk.actor?.credentialHint, "malformed");
  assert.ok(!bytesOf(junk).includes("not-a-key-secret"));
});

Deno.test("edge audit - a token that did not verify is 'unverified'; an unreadable authorization header 'malformed'", () => {
  const unverified = edgeAuditEventOf(refusal({ headers: new Headers({ authorization: `Bearer ${token}` }) }), context);
  assert.deepEqual({ kind: unverified.actor?.kind, hint: unverified.actor?.credentialHint, subject: unverified.actor?.subject }, { kind: PrincipalKind.UNSPECIFIED, hint: "unverified", subject: "" });
  assert.ok(!bytesOf(unverified).includes(token));
  assert.ok(!bytesOf(unverified).includes(jti), "the id of a token nobody verified is not trusted");
  const malformed = edgeAuditEventOf(refusal({ headers: new Headers({ authorization: "Basic dXNlcjpwYXNz" }) }), context);
  assert.equal(malformed.actor?.credentialHint, "malformed");
  assert.ok(!bytesOf(malformed).includes("dXNlcjpwYXNz"));
});

Deno.test("edge audit - a verified caller without the permission: subject, tenant, roles and the token's id", () => {
  const event = edgeAuditEventOf(refusal({ caller: viewer, headers: new Headers({ authorization: `Bearer ${token}` }), code: Code.PermissionDenied, message: "missing permission pipelines.update" }), context);
  assert.equal(event.tenant, "t1");
  assert.deepEqual({ subject: event.actor?.subject, kind: event.actor?.kind, roles: event.actor?.roles, hint: event.actor?.credentialHint }, { subject: "users/u1", kind: PrincipalKind.USER, roles: ["viewer"], hint: `tokens/${jti}` });
  assert.equal(event.outcome?.code, 7);
  assert.ok(!bytesOf(event).includes(token));
  const key = edgeAuditEventOf(refusal({ caller: { ...viewer, subject: "apiKeys/k1" }, headers: new Headers({ authorization: `Bearer ${apiKey}` }), code: Code.ResourceExhausted }), context);
  assert.deepEqual({ kind: key.actor?.kind, hint: key.actor?.credentialHint }, { kind: PrincipalKind.API_KEY, hint: "jmk_ab12cd34" });
});

Deno.test("edge audit - trace id: the gateway's own span first, else the client's traceparent, else none", () => {
  const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  const headers = new Headers({ traceparent });
  assert.equal(edgeAuditEventOf(refusal({ headers }), context).traceId, "4bf92f3577b34da6a3ce929d0e0e4736");
  assert.equal(edgeAuditEventOf(refusal({ headers }), { ...context, activeTraceId: "a".repeat(32) }).traceId, "a".repeat(32));
  assert.equal(traceIdOfHeaders(new Headers({ traceparent: "00-00000000000000000000000000000000-00f067aa0ba902b7-01" })), "");
  assert.equal(traceIdOfHeaders(new Headers({ traceparent: "garbage" })), "");
});

Deno.test("edge audit - a long user agent is cut at 256 characters", () => {
  const event = edgeAuditEventOf(refusal({ headers: new Headers({ "user-agent": "x".repeat(1000) }) }), context);
  assert.equal(event.userAgent.length, 256);
});

Deno.test("edge audit - 401, 403 and 429 are recorded; 413 (same code as 429) and others are not", () => {
  assert.deepEqual([401, 403, 429, 413, 400, 404, 500].map(isEdgeRefusal), [true, true, true, false, false, false, false]);
});

Deno.test("refusal recorder - one event per refusal, each with its own id; a failing sink never throws into the answer", () => {
  const recorded: AuditEvent[] = [];
  const record = createRefusalRecorder({ sink: { record: (e) => recorded.push(e) }, activeTraceId: () => "b".repeat(32) });
  record(refusal());
  record(refusal());
  assert.equal(recorded.length, 2);
  assert.notEqual(recorded[0].name, recorded[1].name);
  for (const event of recorded) assert.match(event.name, /^auditEvents\/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(recorded[0].traceId, "b".repeat(32));
  const failures: unknown[] = [];
  const failing = createRefusalRecorder({ sink: { record: () => { throw new Error("sink closed"); } }, onFailure: (e) => failures.push(e) });
  failing(refusal());
  assert.equal(failures.length, 1);
});

Deno.test("edge audit - the services' caps: a huge request id, message or client address is cut to 1 KiB, the event stays small", () => {
  const huge = "x".repeat(2 * 1024 * 1024);
  const event = edgeAuditEventOf(refusal({ requestId: huge, message: huge, clientAddress: huge, headers: new Headers({ "user-agent": huge, "x-api-key": huge }) }), context);
  for (const value of [event.requestId, event.outcome!.message, event.clientAddress]) {
    assert.ok(value.length <= 1024 && value.endsWith("…[cut]"), `${value.length} characters`);
  }
  assert.equal(event.userAgent.length, 256);
  assert.equal(event.actor?.credentialHint, "malformed", "a key that is not a key is named malformed, never copied");
  assert.ok(toBinary(AuditEventSchema, event).length < 16 * 1024);
});

// The pure parts of the audit recorder: who an event names as the actor, which tenant it goes to,
// the resource and its type, the redacted and bounded request, and the event's times.
import t from "tap";
import { create, fromJsonString, toBinary } from "@bufbuild/protobuf";
import { AuditEventSchema } from "../../gen/jobmesh/v1/audit_pb.js";
import { AuthService, LoginRequestSchema, PrincipalKind } from "../../gen/jobmesh/v1/auth_pb.js";
import { CreateJobRequestSchema, CreateJobResponseSchema, CreateJobsRequestSchema, GetJobRequestSchema, JobService, UploadDocumentRequestSchema } from "../../gen/jobmesh/v1/jobs_pb.js";
import { isAudited, mayHoldRedacted, maxRequestBytes, maxSerialisedRequestBytes, requestJsonOf, resourceOf, resourceTypeOf } from "../rpc/audit.ts";
import { auditEventOf, capped, maxFieldBytes, type CallFacts } from "./event.ts";

const base: CallFacts = {
  id: "0b5e0a4e-6a53-4c8e-9d1f-3f7c2a1b9e01",
  action: "jobmesh.v1.JobService.GetJob",
  resource: "",
  resourceType: "",
  requestId: "",
  traceId: "",
  startTime: new Date("2026-01-02T03:04:05.678Z"),
  durationMs: 12.3456,
  clientAddress: "10.0.0.7",
  userAgent: "",
  request: "{}",
  recorder: "jobs",
};
const tenant = "7d3c7d0e-25a8-4d43-9b3d-4d1f6f5a2b11";

void t.test("actor - an admitted caller: its subject, kind, roles and tenant, with the credential hint it presented", async (t) => {
  const e = auditEventOf({
    ...base,
    caller: { tenantId: tenant, subject: "users/u1", roles: ["admin"] },
    attempted: { kind: "token", subject: "users/u1", tenantId: tenant, roles: ["admin"], credentialHint: "tokens/j1" },
  });
  t.equal(e.tenant, tenant);
  t.match(e.actor, { subject: "users/u1", kind: PrincipalKind.USER, roles: ["admin"], credentialHint: "tokens/j1" });
  const key = auditEventOf({ ...base, caller: { tenantId: tenant, subject: "apiKeys/k1", roles: ["viewer"] } });
  t.equal(key.actor?.kind, PrincipalKind.API_KEY);
  t.equal(key.actor?.credentialHint, "");
});

void t.test("actor - a refused caller: what identity learned before it refused", async (t) => {
  const denied = auditEventOf({ ...base, attempted: { kind: "token", subject: "users/u2", tenantId: tenant, roles: ["viewer"], credentialHint: "tokens/j2" } });
  t.equal(denied.tenant, tenant);
  t.match(denied.actor, { subject: "users/u2", kind: PrincipalKind.USER, roles: ["viewer"], credentialHint: "tokens/j2" });
  const badKey = auditEventOf({ ...base, attempted: { kind: "api_key", credentialHint: "jmk_ab12cd34" } });
  t.equal(badKey.tenant, "", "tenant unknown");
  t.match(badKey.actor, { subject: "", kind: PrincipalKind.API_KEY, roles: [], credentialHint: "jmk_ab12cd34" });
  const badToken = auditEventOf({ ...base, attempted: { kind: "token", credentialHint: "unverified" } });
  t.match(badToken.actor, { subject: "", kind: PrincipalKind.UNSPECIFIED, credentialHint: "unverified" });
});

void t.test("actor - a public method's attribution when nobody authenticated; else anonymous", async (t) => {
  const login = auditEventOf({ ...base, attempted: { kind: "anonymous" }, attribution: { tenantId: tenant, credentialHint: "email:a@example.com" } });
  t.equal(login.tenant, tenant);
  t.match(login.actor, { subject: "", kind: PrincipalKind.UNSPECIFIED, roles: [], credentialHint: "email:a@example.com" });
  const anonymous = auditEventOf({ ...base, attempted: { kind: "anonymous" } });
  t.equal(anonymous.tenant, "");
  t.match(anonymous.actor, { subject: "", kind: PrincipalKind.UNSPECIFIED, roles: [], credentialHint: "" });
  const nothing = auditEventOf(base);
  t.equal(nothing.actor?.subject, "", "no identity interceptor at all: anonymous too");
});

void t.test("outcome - OK is code 0; an error is its code and the message the client saw, without the code prefix", async (t) => {
  t.match(auditEventOf(base).outcome, { code: 0, message: "" });
  // 5 is NOT_FOUND; rawMessage is a ConnectError's message without its "[not_found]" prefix.
  const error = { code: 5, rawMessage: "job jobs/x not found" };
  t.match(auditEventOf({ ...base, error }).outcome, { code: 5, message: "job jobs/x not found" });
});

void t.test("event - the name carries the id, times are a Date's milliseconds and microseconds of duration; chain fields empty", async (t) => {
  const e = auditEventOf({ ...base, resource: "jobs/x", resourceType: "jobmesh.dev/Job", userAgent: "u".repeat(300) });
  t.equal(e.name, `auditEvents/${base.id}`);
  t.equal(e.eventTime?.seconds, BigInt(Math.floor(base.startTime.getTime() / 1000)));
  t.equal(e.eventTime?.nanos, 678_000_000);
  t.equal(e.duration?.seconds, 0n);
  t.equal(e.duration?.nanos, 12_346_000, "12.3456 ms → 12346 µs");
  t.equal(e.duration!.nanos % 1000, 0);
  t.equal(e.userAgent.length, 256);
  t.equal(e.sequence, 0n);
  t.equal(e.prevHash, "");
  t.equal(e.hash, "");
  t.equal(e.recorder, "jobs");
  t.equal(e.resourceType, "jobmesh.dev/Job");
  t.equal(auditEventOf({ ...base, resourceType: "jobmesh.dev/Job" }).resourceType, "", "no resource, no type");
  t.ok(toBinary(AuditEventSchema, e).length > 0);
});

void t.test("resource - the request's name, a nested resource's name, or what a create made; typed by the matching pattern", async (t) => {
  const getJob = JobService.method.getJob;
  t.same(resourceOf(getJob, create(GetJobRequestSchema, { name: "jobs/abc" }), undefined), { resource: "jobs/abc", resourceType: "jobmesh.dev/Job" });
  const created = create(CreateJobResponseSchema, { job: { name: "jobs/new1" } });
  t.same(resourceOf(JobService.method.createJob, {}, created), { resource: "jobs/new1", resourceType: "jobmesh.dev/Job" });
  t.same(resourceOf(JobService.method.createJob, {}, undefined), { resource: "", resourceType: "" }, "a failed create names nothing");
  t.same(resourceOf(AuthService.method.updateUser, { user: { name: "users/u9" } }, undefined), { resource: "users/u9", resourceType: "jobmesh.dev/User" });
  t.same(resourceOf(AuthService.method.login, { email: "a@example.com" }, {}), { resource: "", resourceType: "" });
  t.equal(resourceTypeOf("jobs/abc/result"), "jobmesh.dev/JobResult");
  t.equal(resourceTypeOf("pipelines/default"), "jobmesh.dev/Pipeline");
  t.equal(resourceTypeOf("nothing/here/at/all"), "");
});

void t.test("request - proto3 JSON of the redacted request; a long one is cut at 8 KiB and says so", async (t) => {
  const login = create(LoginRequestSchema, { email: "a@example.com", password: "correct horse battery staple" });
  const json = requestJsonOf(LoginRequestSchema, login);
  t.notOk(json.includes("correct horse"), "the password is not in it");
  t.same(JSON.parse(json), { email: "a@example.com", password: "[redacted]" });
  const upload = create(UploadDocumentRequestSchema, { part: { case: "metadata", value: { filename: "é".repeat(10_000) } } });
  const long = requestJsonOf(UploadDocumentRequestSchema, upload);
  t.ok(new TextEncoder().encode(long).length <= maxRequestBytes, "at most 8 KiB");
  t.ok(long.endsWith("…[cut at 8 KiB]"), "says it was cut");
  t.notOk(long.includes("\uFFFD"), "not cut inside a character");
  t.same(fromJsonString(GetJobRequestSchema, requestJsonOf(GetJobRequestSchema, create(GetJobRequestSchema, { name: "jobs/a" }))).name, "jobs/a");
});

void t.test("audited - health and reflection are not; every mesh service is", async (t) => {
  t.ok(isAudited(JobService.method.getJob));
  t.notOk(isAudited({ parent: { typeName: "grpc.health.v1.Health" } } as never));
  t.notOk(isAudited({ parent: { typeName: "grpc.reflection.v1.ServerReflection" } } as never));
});

void t.test("request - only a type that can hold a marked field is copied; a nested secret is still redacted", async (t) => {
  t.notOk(mayHoldRedacted(GetJobRequestSchema), "GetJob holds nothing secret");
  t.ok(mayHoldRedacted(LoginRequestSchema), "a password");
  t.ok(mayHoldRedacted(CreateJobRequestSchema), "a document's text, two levels down");
  t.ok(mayHoldRedacted(CreateJobsRequestSchema), "the same inside a list");
  t.ok(mayHoldRedacted(UploadDocumentRequestSchema), "a chunk in a oneof");
  const job = create(CreateJobsRequestSchema, { requests: [{ job: { document: { source: { case: "text", value: "the secret document" } } } }] });
  t.notOk(requestJsonOf(CreateJobsRequestSchema, job).includes("the secret document"));
});

void t.test("caps - every free-text field is at most 1 KiB, cut on a character boundary and marked, so an event stays far under NATS's 1 MiB", async (t) => {
  const huge = "é".repeat(2 * 1024 * 1024);
  const e = auditEventOf({
    ...base,
    action: `a${huge}`,
    resource: `jobs/${huge}`,
    resourceType: `t${huge}`,
    requestId: `r${huge}`,
    traceId: `x${huge}`,
    clientAddress: `c${huge}`,
    userAgent: huge,
    recorder: `j${huge}`,
    error: { code: 3, rawMessage: `m${huge}` },
    attempted: { kind: "token", subject: `users/${huge}`, tenantId: `t${huge}`, roles: Array.from({ length: 100 }, () => `role${huge}`), credentialHint: `h${huge}` },
  });
  const bytes = (s: string) => new TextEncoder().encode(s).length;
  const fields = { action: e.action, resource: e.resource, resourceType: e.resourceType, requestId: e.requestId, traceId: e.traceId, clientAddress: e.clientAddress, recorder: e.recorder, tenant: e.tenant, message: e.outcome!.message, subject: e.actor!.subject, credentialHint: e.actor!.credentialHint };
  for (const [name, value] of Object.entries(fields)) {
    t.ok(bytes(value) <= maxFieldBytes, `${name}: ${bytes(value)} bytes`);
    t.ok(value.endsWith("…[cut]"), `${name}: says it was cut`);
    t.notOk(value.includes("\uFFFD"), `${name}: not cut inside a character`);
  }
  t.ok(e.actor!.roles.length <= 32, "a bounded number of roles");
  for (const role of e.actor!.roles) t.ok(bytes(role) <= maxFieldBytes, "each role capped");
  t.equal([...e.userAgent].length, 256, "the user agent keeps its own 256-character bound");
  t.ok(toBinary(AuditEventSchema, e).length < 64 * 1024, `${toBinary(AuditEventSchema, e).length} bytes in all`);

  t.equal(capped("jobs/short"), "jobs/short", "a short text is kept whole");
  const exact = "a".repeat(maxFieldBytes);
  t.equal(capped(exact), exact, "exactly 1 KiB is kept whole");
  t.equal(capped(`${"a".repeat(maxFieldBytes - 1)}é`).endsWith("…[cut]"), true, "1 KiB + 1 byte is cut");
  const emoji = capped("😀".repeat(300));
  t.ok(emoji.endsWith("…[cut]") && !emoji.includes("\uFFFD"), "300 emoji (600 UTF-16 units, 1200 bytes) are cut between two of them");
  t.equal(capped("😀".repeat(256)), "😀".repeat(256), "256 emoji (1024 bytes) are kept whole");
});

void t.test("request - a request of more than 64 KiB encoded is a stub naming its size, not megabytes of JSON", async (t) => {
  const name = `pipelines/${"a".repeat(2 * 1024 * 1024)}`;
  const big = create(GetJobRequestSchema, { name });
  const json = requestJsonOf(GetJobRequestSchema, big);
  t.same(JSON.parse(json), { omitted: `request of ${toBinary(GetJobRequestSchema, big).length} bytes` });
  const under = create(GetJobRequestSchema, { name: `jobs/${"b".repeat(maxSerialisedRequestBytes - 100)}` });
  t.ok(requestJsonOf(GetJobRequestSchema, under).endsWith("…[cut at 8 KiB]"), "just under the limit: JSON, cut at 8 KiB");
});

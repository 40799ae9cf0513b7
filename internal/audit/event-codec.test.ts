// The hand-written AuditEvent encoder: byte for byte what toBinary gives, over generated events,
// and it knows every field of the schemas it writes (a new field fails here, not in production).
import t from "tap";
import fc from "fast-check";
import { create, fromBinary, toBinary, type DescMessage } from "@bufbuild/protobuf";
import { DurationSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { ActorSchema, AuditEventSchema, AuditOutcomeSchema } from "../../gen/jobmesh/v1/audit_pb.js";
import { encodeAuditEvent, encodedFields } from "./event-codec.ts";
import { auditEventOf, type CallFacts } from "./event.ts";

// Empty, short, any code point, lone surrogates (TextEncoder writes U+FFFD), and long enough for two-byte lengths.
const loneSurrogates = fc.string({ unit: fc.integer({ min: 0xd7f0, max: 0xe010 }).map((c) => String.fromCharCode(c)), maxLength: 20 });
const text = fc.oneof(fc.constant(""), fc.string(), fc.string({ unit: "binary", maxLength: 40 }), loneSurrogates, fc.string({ minLength: 200, maxLength: 400 }));
const int64 = fc.oneof(fc.constant(0n), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }));
const int32 = fc.oneof(fc.constant(0), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }));
const secondsNanos = fc.record({ seconds: int64, nanos: int32 });

const events = fc.record({
  name: text, sequence: int64, tenant: text, action: text, resource: text, requestId: text, traceId: text,
  prevHash: text, hash: text, resourceType: text, clientAddress: text, userAgent: text, request: text, recorder: text,
  actor: fc.option(fc.record({ subject: text, kind: fc.integer({ min: 0, max: 3 }), roles: fc.array(text, { maxLength: 5 }), credentialHint: text }), { nil: undefined }),
  outcome: fc.option(fc.record({ code: int32, message: text }), { nil: undefined }),
  eventTime: fc.option(secondsNanos, { nil: undefined }),
  duration: fc.option(secondsNanos, { nil: undefined }),
}).map((e) => create(AuditEventSchema, e));

void t.test("encodeAuditEvent - the same bytes as toBinary, for any event", async (t) => {
  fc.assert(fc.property(events, (event) => {
    const bytes = encodeAuditEvent(event);
    t.same(bytes, toBinary(AuditEventSchema, event));
    return Buffer.from(bytes).equals(toBinary(AuditEventSchema, event));
  }), { numRuns: 500 });
});

void t.test("encodeAuditEvent - an event from the builder decodes to itself", async (t) => {
  const facts: CallFacts = {
    id: "0b5e0a4e-6a53-4c8e-9d1f-3f7c2a1b9e01", action: "jobmesh.v1.JobService.GetJob", resource: "jobs/x", resourceType: "jobmesh.dev/Job",
    requestId: "r1", traceId: "0af7651916cd43dd8448eb211c80319c", startTime: new Date("2026-01-02T03:04:05.678Z"), durationMs: 12.3456,
    clientAddress: "10.0.0.7", userAgent: "ua/1 ✓", request: '{"name":"jobs/x"}', recorder: "jobs",
    caller: { tenantId: "t1", subject: "users/u1", roles: ["admin", "auditor"] }, error: { code: 5, rawMessage: "not found" },
  };
  const event = auditEventOf(facts);
  const bytes = encodeAuditEvent(event);
  t.same(bytes, toBinary(AuditEventSchema, event));
  t.same(fromBinary(AuditEventSchema, bytes), event);
});

void t.test("encodeAuditEvent - writes every field of every message it encodes (a new proto field fails here)", async (t) => {
  const schemas: DescMessage[] = [AuditEventSchema, ActorSchema, AuditOutcomeSchema, TimestampSchema, DurationSchema];
  for (const schema of schemas) {
    t.same(schema.fields.map((f) => f.number).sort((a, b) => a - b), encodedFields[schema.typeName], schema.typeName);
  }
  // Every message field of the event is one of those types: a new nested type is a new entry.
  const nested = AuditEventSchema.fields.flatMap((f) => (f.fieldKind === "message" ? [f.message.typeName] : []));
  for (const type of nested) t.ok(encodedFields[type], `${type} is known to the encoder`);
  t.same(ActorSchema.fields.filter((f) => f.fieldKind === "message").length, 0, "Actor holds no message");
  t.same(AuditOutcomeSchema.fields.filter((f) => f.fieldKind === "message").length, 0, "AuditOutcome holds no message");
});

import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { createValidator, violationsToProto } from "@bufbuild/protovalidate";
import { Code, ConnectError } from "@connectrpc/connect";
import { errorFromJson, errorToJson } from "@connectrpc/connect/protocol-connect";
// @deno-types="../../gen/google/rpc/error_details_pb.d.ts"
import { BadRequestSchema, RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
// @deno-types="../../gen/jobmesh/v1/jobs_pb.d.ts"
import { CreateJobsRequestSchema, GetJobRequestSchema } from "../../gen/jobmesh/v1/jobs_pb.js";
import { BodyTooLargeError, errorResponse, httpStatusByCode, httpStatusOf, statusBodyOf, toGatewayError } from "./http-errors.ts";

Deno.test("http-errors - the table maps every code as the issue specifies", () => {
  const expected: Record<string, number> = {
    Canceled: 499,
    Unknown: 500,
    InvalidArgument: 400,
    DeadlineExceeded: 504,
    NotFound: 404,
    AlreadyExists: 409,
    PermissionDenied: 403,
    ResourceExhausted: 429,
    FailedPrecondition: 400,
    Aborted: 409,
    OutOfRange: 400,
    Unimplemented: 501,
    Internal: 500,
    Unavailable: 503,
    DataLoss: 500,
    Unauthenticated: 401,
  };
  const codes = Object.entries(Code).filter(([, v]) => typeof v === "number") as [string, Code][];
  assert.equal(codes.length, 16);
  for (const [name, code] of codes) {
    assert.equal(httpStatusByCode[code], expected[name], name);
    assert.equal(httpStatusOf(new ConnectError("x", code)), expected[name], name);
  }
});

Deno.test("http-errors - a body over the limit is 413, any other RESOURCE_EXHAUSTED 429", () => {
  const tooLarge = new BodyTooLargeError(1024, "request body");
  assert.ok(tooLarge instanceof ConnectError);
  assert.equal(tooLarge.code, Code.ResourceExhausted);
  assert.equal(httpStatusOf(tooLarge), 413);
  assert.match(tooLarge.rawMessage, /request body is larger than the limit of 1024 bytes/);
  assert.equal(httpStatusOf(new ConnectError("slow down", Code.ResourceExhausted)), 429);
  assert.ok(!(new ConnectError("slow down", Code.ResourceExhausted) instanceof BodyTooLargeError));
});

Deno.test("http-errors - anything but a ConnectError becomes INTERNAL without its cause in the message", () => {
  const secret = new Error("password=hunter2 at db.internal:5432");
  const error = toGatewayError(secret);
  assert.equal(error.code, Code.Internal);
  assert.equal(error.rawMessage, "internal error");
  assert.equal(error.cause, secret);
  const known = new ConnectError("no such job", Code.NotFound);
  assert.equal(toGatewayError(known), known);
  const body = statusBodyOf(toGatewayError("a thrown string"));
  assert.deepEqual(body, { code: Code.Internal, message: "internal error", details: [] });
});

/** A real validation failure, as @connectrpc/validate raises it in the services. */
function validationError(): ConnectError {
  const request = create(CreateJobsRequestSchema, { requests: [{ job: { pipeline: "pipelines/ok" } }, { job: { pipeline: "Not A Pipeline" }, requestId: "nope" }] });
  const result = createValidator().validate(CreateJobsRequestSchema, request);
  assert.equal(result.kind, "invalid");
  if (result.kind !== "invalid") throw new Error("unreachable");
  const [value, desc] = violationsToProto(result.violations);
  return new ConnectError(result.error.message, Code.InvalidArgument, undefined, [{ desc, value }], result.error);
}

function assertValidationBody(error: ConnectError) {
  const body = statusBodyOf(error);
  assert.equal(body.code, 3);
  assert.equal(httpStatusOf(error), 400);
  const types = body.details.map((d) => (d as { "@type": string })["@type"]);
  assert.deepEqual(types, ["type.googleapis.com/buf.validate.Violations", "type.googleapis.com/google.rpc.BadRequest"]);
  const badRequest = body.details[1] as { fieldViolations: { field: string; description: string; reason: string }[] };
  const fields = badRequest.fieldViolations.map((v) => v.field).sort();
  // JSON names (request_id → requestId) with list indexes, as the client wrote the body.
  assert.deepEqual(fields, ["requests[0].job.document", "requests[1].job.document", "requests[1].job.pipeline", "requests[1].requestId"]);
  for (const v of badRequest.fieldViolations) {
    assert.ok(v.description.length > 0);
    assert.ok(v.reason.length > 0, "the rule id");
  }
  const violations = body.details[0] as { violations: unknown[] };
  assert.equal(violations.violations.length, 4);
}

Deno.test("http-errors - buf.validate.Violations render as themselves and as a google.rpc.BadRequest", () => {
  assertValidationBody(validationError());
});

Deno.test("http-errors - the same, from details that came over the wire from a service", () => {
  const sent = validationError();
  const received = errorFromJson(errorToJson(sent, undefined), undefined, new ConnectError("fallback"));
  assert.ok(received.details.every((d) => "type" in d), "incoming details");
  assertValidationBody(received);
});

Deno.test("http-errors - other details as Any JSON; unknown types left out", () => {
  const error = new ConnectError("wait", Code.Unavailable, undefined, [
    { desc: RetryInfoSchema, value: { retryDelay: { seconds: 2n } } },
    { desc: BadRequestSchema, value: create(BadRequestSchema, { fieldViolations: [{ field: "pageSize", description: "too big" }] }) },
  ]);
  error.details.push({ type: "nobody.Knows", value: new Uint8Array([8, 1]) });
  assert.deepEqual(statusBodyOf(error), {
    code: Code.Unavailable,
    message: "wait",
    details: [
      { "@type": "type.googleapis.com/google.rpc.RetryInfo", retryDelay: "2s" },
      { "@type": "type.googleapis.com/google.rpc.BadRequest", fieldViolations: [{ field: "pageSize", description: "too big" }] },
    ],
  });
});

Deno.test("http-errors - errorResponse: status from the table, JSON google.rpc.Status, extra headers kept", async () => {
  const response = errorResponse(new ConnectError("no such job", Code.NotFound), { "x-request-id": "r1" });
  assert.equal(response.status, 404);
  assert.equal(response.headers.get("content-type"), "application/json");
  assert.equal(response.headers.get("x-request-id"), "r1");
  assert.deepEqual(await response.json(), { code: 5, message: "no such job", details: [] });
  const internal = errorResponse(new TypeError("cannot read properties of undefined (reading 'secret')"));
  assert.equal(internal.status, 500);
  assert.deepEqual(await internal.json(), { code: 13, message: "internal error", details: [] });
  assert.equal(errorResponse(new BodyTooLargeError(10, "document")).status, 413);
});

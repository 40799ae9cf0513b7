import assert from "node:assert/strict";
import { create, createFileRegistry, type DescMessage, type Message } from "@bufbuild/protobuf";
import {
  file_google_protobuf_duration,
  file_google_protobuf_field_mask,
  file_google_protobuf_timestamp,
  file_google_protobuf_wrappers,
  FileDescriptorProtoSchema,
  timestampFromDate,
} from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { httpBindingsOfServices, meshServices, type HttpBinding } from "../contract/index.ts";
// @deno-types="../../gen/google/rpc/error_details_pb.d.ts"
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";
// @deno-types="../../gen/jobmesh/v1/jobs_pb.d.ts"
import { GetJobResponseSchema, JobSchema, Priority } from "../../gen/jobmesh/v1/jobs_pb.js";
import { messageToJson, parseJsonBody, requestFromHttp, responseToJson } from "./transcode.ts";

// A request type with every kind of field the query string can carry, built from a descriptor
// so the test does not depend on which fields today's services happen to have.
const STRING = 9, INT32 = 5, INT64 = 3, BOOL = 8, BYTES = 12, DOUBLE = 1, MESSAGE = 11, ENUM = 14;
const OPTIONAL = 1, REPEATED = 3;
const probeFile = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "probe.proto",
    package: "probe.v1",
    syntax: "proto3",
    dependency: ["google/protobuf/timestamp.proto", "google/protobuf/duration.proto", "google/protobuf/field_mask.proto", "google/protobuf/wrappers.proto"],
    enumType: [{ name: "State", value: [{ name: "STATE_UNSPECIFIED", number: 0 }, { name: "RUNNING", number: 1 }, { name: "DONE", number: 2 }] }],
    messageType: [
      { name: "Inner", field: [{ name: "min_size", number: 1, type: INT64, label: OPTIONAL, jsonName: "minSize" }] },
      {
        name: "Filter",
        field: [
          { name: "state", number: 1, type: ENUM, typeName: ".probe.v1.State", label: OPTIONAL, jsonName: "state" },
          { name: "tags", number: 2, type: STRING, label: REPEATED, jsonName: "tags" },
          { name: "inner", number: 3, type: MESSAGE, typeName: ".probe.v1.Inner", label: OPTIONAL, jsonName: "inner" },
        ],
      },
      {
        name: "Probe",
        field: [
          { name: "name", number: 1, type: STRING, label: OPTIONAL, jsonName: "name" },
          { name: "page_size", number: 2, type: INT32, label: OPTIONAL, jsonName: "pageSize" },
          { name: "big", number: 3, type: INT64, label: OPTIONAL, jsonName: "big" },
          { name: "flag", number: 4, type: BOOL, label: OPTIONAL, jsonName: "flag" },
          { name: "blob", number: 5, type: BYTES, label: OPTIONAL, jsonName: "blob" },
          { name: "ratio", number: 6, type: DOUBLE, label: OPTIONAL, jsonName: "ratio" },
          { name: "state", number: 7, type: ENUM, typeName: ".probe.v1.State", label: OPTIONAL, jsonName: "state" },
          { name: "states", number: 8, type: ENUM, typeName: ".probe.v1.State", label: REPEATED, jsonName: "states" },
          { name: "ids", number: 9, type: INT64, label: REPEATED, jsonName: "ids" },
          { name: "filter", number: 10, type: MESSAGE, typeName: ".probe.v1.Filter", label: OPTIONAL, jsonName: "filter" },
          { name: "at", number: 11, type: MESSAGE, typeName: ".google.protobuf.Timestamp", label: OPTIONAL, jsonName: "at" },
          { name: "wait", number: 12, type: MESSAGE, typeName: ".google.protobuf.Duration", label: OPTIONAL, jsonName: "wait" },
          { name: "mask", number: 13, type: MESSAGE, typeName: ".google.protobuf.FieldMask", label: OPTIONAL, jsonName: "mask" },
          { name: "limit", number: 14, type: MESSAGE, typeName: ".google.protobuf.Int32Value", label: OPTIONAL, jsonName: "limit" },
          { name: "labels", number: 15, type: MESSAGE, typeName: ".probe.v1.Probe.LabelsEntry", label: REPEATED, jsonName: "labels" },
          { name: "filters", number: 16, type: MESSAGE, typeName: ".probe.v1.Filter", label: REPEATED, jsonName: "filters" },
        ],
        nestedType: [
          {
            name: "LabelsEntry",
            options: { mapEntry: true },
            field: [
              { name: "key", number: 1, type: STRING, label: OPTIONAL, jsonName: "key" },
              { name: "value", number: 2, type: STRING, label: OPTIONAL, jsonName: "value" },
            ],
          },
        ],
      },
    ],
    service: [{ name: "Probes", method: [{ name: "Get", inputType: ".probe.v1.Probe", outputType: ".probe.v1.Probe" }] }],
  }),
  (name) => [file_google_protobuf_timestamp, file_google_protobuf_duration, file_google_protobuf_field_mask, file_google_protobuf_wrappers].find((f) => f.proto.name === name),
);
const probeMethod = probeFile.getService("probe.v1.Probes")!.methods[0]!;
const probe = (path = "/v1/{name=probes/*}", body = ""): HttpBinding => ({ method: probeMethod, verb: body === "" ? "GET" : "POST", path, body, responseBody: "" });

const real = (name: string) => httpBindingsOfServices(meshServices).find((b) => b.method.name === name)!;
const vars = (o: Record<string, string> = {}) => new Map(Object.entries(o));
const q = (s: string) => new URLSearchParams(s);
// deno-lint-ignore no-explicit-any
const fieldsOf = (m: Message) => m as unknown as Record<string, any>;

/** Asserts `fn` throws INVALID_ARGUMENT whose message names `field` and whose BadRequest points at it. */
function assertFieldError(fn: () => unknown, field: string) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ConnectError, String(e));
    assert.equal(e.code, Code.InvalidArgument);
    assert.ok(e.rawMessage.includes(`"${field}"`), `message "${e.rawMessage}" does not name ${field}`);
    const [badRequest] = e.findDetails(BadRequestSchema);
    assert.equal(badRequest?.fieldViolations[0]?.field, field, e.rawMessage);
    return true;
  });
}

Deno.test("transcode - parseJsonBody: empty is no body, malformed is INVALID_ARGUMENT", () => {
  assert.equal(parseJsonBody(""), undefined);
  assert.deepEqual(parseJsonBody('{"a":1}'), { a: 1 });
  assert.throws(() => parseJsonBody("{nope"), (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument && e.rawMessage.startsWith("request body is not valid JSON: "));
});

Deno.test("transcode - path variables set their (nested) fields", () => {
  const m = requestFromHttp(real("UpdatePipeline"), vars({ "pipeline.name": "pipelines/p1" }), q(""), { displayName: "x" }) as Message & { pipeline: { name: string; displayName: string } };
  assert.equal(m.$typeName, "jobmesh.v1.UpdatePipelineRequest");
  assert.equal(m.pipeline.name, "pipelines/p1");
  assert.equal(m.pipeline.displayName, "x");
  const get = requestFromHttp(real("GetJob"), vars({ name: "jobs/j1" }), q(""), undefined) as Message & { name: string };
  assert.equal(get.name, "jobs/j1");
});

Deno.test("transcode - the body may repeat a path field only with the same value", () => {
  const update = real("UpdateUser");
  const same = requestFromHttp(update, vars({ "user.name": "users/u1" }), q(""), { name: "users/u1", displayName: "A" }) as Message & { user: { name: string } };
  assert.equal(same.user.name, "users/u1");
  assertFieldError(() => requestFromHttp(update, vars({ "user.name": "users/u1" }), q(""), { name: "users/u2" }), "user.name");
});

Deno.test("transcode - query: scalars, int64 as strings, bool, bytes, enums by name or number, repeated", () => {
  const m = fieldsOf(requestFromHttp(probe(), vars({ name: "probes/p" }), q("pageSize=5&big=9007199254740993&flag=true&blob=AQID&ratio=1.5&state=DONE&states=RUNNING&states=2&ids=1&ids=2"), undefined));
  assert.equal(m.name, "probes/p");
  assert.equal(m.pageSize, 5);
  assert.equal(m.big, 9007199254740993n);
  assert.equal(m.flag, true);
  assert.deepEqual(m.blob, new Uint8Array([1, 2, 3]));
  assert.equal(m.ratio, 1.5);
  assert.equal(m.state, 2);
  assert.deepEqual(m.states, [1, 2]);
  assert.deepEqual(m.ids, [1n, 2n]);
});

Deno.test("transcode - query: proto names work too, nested fields and maps", () => {
  const m = fieldsOf(requestFromHttp(probe(), vars(), q("page_size=7&filter.state=RUNNING&filter.tags=a&filter.tags=b&filter.inner.min_size=3&labels[env]=prod&labels[team]=x"), undefined));
  assert.equal(m.pageSize, 7);
  assert.equal(m.filter.state, 1);
  assert.deepEqual(m.filter.tags, ["a", "b"]);
  assert.equal(m.filter.inner.minSize, 3n);
  assert.deepEqual(m.labels, { env: "prod", team: "x" });
});

Deno.test("transcode - query: well-known types in their JSON string forms", () => {
  const m = fieldsOf(requestFromHttp(probe(), vars(), q("at=2025-01-02T03:04:05Z&wait=1.5s&mask=displayName,filter.state&limit=4"), undefined));
  assert.deepEqual(m.at, timestampFromDate(new Date("2025-01-02T03:04:05Z")));
  assert.equal(m.wait.seconds, 1n);
  assert.equal(m.wait.nanos, 500_000_000);
  assert.deepEqual(m.mask.paths, ["display_name", "filter.state"]);
  assert.equal(m.limit, 4);
  // A real one: UpdatePipeline's update_mask comes from the query while the body is the pipeline.
  const update = requestFromHttp(real("UpdatePipeline"), vars({ "pipeline.name": "pipelines/p1" }), q("updateMask=displayName,labels"), {}) as Message & { updateMask: { paths: string[] } };
  assert.deepEqual(update.updateMask.paths, ["display_name", "labels"]);
});

Deno.test("transcode - query: unknown parameters and wrong types are 400 naming the parameter", () => {
  assertFieldError(() => requestFromHttp(probe(), vars(), q("nope=1"), undefined), "nope");
  assertFieldError(() => requestFromHttp(probe(), vars(), q("filter.nope=1"), undefined), "filter.nope");
  assertFieldError(() => requestFromHttp(probe(), vars(), q("pageSize=ten"), undefined), "pageSize");
  assertFieldError(() => requestFromHttp(probe(), vars(), q("page_size=1.5"), undefined), "page_size");
  assertFieldError(() => requestFromHttp(probe(), vars(), q("big=1e999"), undefined), "big");
  assertFieldError(() => requestFromHttp(probe(), vars(), q("flag=yes"), undefined), "flag");
  assertFieldError(() => requestFromHttp(probe(), vars(), q("state=PAUSED"), undefined), "state");
  assertFieldError(() => requestFromHttp(probe(), vars(), q("filter.state=NOPE"), undefined), "filter.state");
  assertFieldError(() => requestFromHttp(probe(), vars(), q("at=yesterday"), undefined), "at");
  assertFieldError(() => requestFromHttp(probe(), vars(), q("wait=5 minutes"), undefined), "wait");
  assertFieldError(() => requestFromHttp(probe(), vars(), q("pageSize=1&pageSize=2"), undefined), "pageSize");
  assertFieldError(() => requestFromHttp(probe(), vars(), q("filters=x"), undefined), "filters");
  assertFieldError(() => requestFromHttp(probe(), vars({ name: "probes/p" }), q("name=other"), undefined), "name");
  assertFieldError(() => requestFromHttp(real("ListJobs"), vars(), q("pageSize=x"), undefined), "pageSize");
  assertFieldError(() => requestFromHttp(real("ListJobs"), vars(), q("page_sise=3"), undefined), "page_sise");
});

Deno.test("transcode - body '*' fills the whole request and admits no query parameter", () => {
  const cancel = real("CancelJob");
  const m = requestFromHttp(cancel, vars({ name: "jobs/j1" }), q(""), {}) as Message & { name: string };
  assert.equal(m.name, "jobs/j1");
  const login = requestFromHttp(real("Login"), vars(), q(""), { email: "a@b.c", password: "pw" }) as Message & Record<string, unknown>;
  assert.equal(login.email, "a@b.c");
  assertFieldError(() => requestFromHttp(cancel, vars({ name: "jobs/j1" }), q("etag=x"), {}), "etag");
  assertFieldError(() => requestFromHttp(real("Login"), vars(), q(""), { email: "a@b.c", passwd: "pw" }), "passwd");
  assert.throws(() => requestFromHttp(cancel, vars({ name: "jobs/j1" }), q(""), [1, 2]), (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument);
});

Deno.test("transcode - body 'field' fills that field, the query the rest", () => {
  const createJob = real("CreateJob");
  const m = requestFromHttp(createJob, vars(), q("requestId=r-1"), { pipeline: "pipelines/p1", priority: "PRIORITY_HIGH" }) as Message & { requestId: string; job: { pipeline: string; priority: number } };
  assert.equal(m.requestId, "r-1");
  assert.equal(m.job.pipeline, "pipelines/p1");
  assert.equal(m.job.priority, Priority.HIGH);
  // The body's own fields are not request fields: naming one at the top level is unknown.
  assertFieldError(() => requestFromHttp(createJob, vars(), q(""), { pipeline: "pipelines/p1", nope: 1 }), "job.nope");
  assertFieldError(() => requestFromHttp(createJob, vars(), q(""), { pipeline: "pipelines/p1", priority: "URGENT" }), "job.priority");
  assertFieldError(() => requestFromHttp(createJob, vars(), q(""), { pipeline: 5 }), "job.pipeline");
  assertFieldError(() => requestFromHttp(createJob, vars(), q("job.pipeline=x"), {}), "job.pipeline");
});

Deno.test("transcode - body errors deep inside lists and maps get their whole path", () => {
  const batch = real("CreateJobs");
  assertFieldError(() => requestFromHttp(batch, vars(), q(""), { requests: [{ job: { pipeline: "p" } }, { job: { pipeline: "p", labels: { a: 1 } } }] }), "requests[1].job.labels");
  assertFieldError(() => requestFromHttp(batch, vars(), q(""), { requests: [{ job: { pipeline: "p", createTime: "soon" } }] }), "requests[0].job.createTime");
  assertFieldError(() => requestFromHttp(probe("/v1/probes", "*"), vars(), q(""), { filters: [{}, { inner: { min_size: "x" } }] }), "filters[1].inner.min_size");
});

Deno.test("transcode - no body: a body is refused", () => {
  assert.throws(() => requestFromHttp(real("GetJob"), vars({ name: "jobs/j1" }), q(""), { name: "jobs/j2" }), (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument);
});

Deno.test("transcode - responses: proto3 JSON with defaults, int64 strings, enum names, timestamps; response_body", () => {
  const job = create(JobSchema, { name: "jobs/j1", priority: Priority.HIGH, createTime: timestampFromDate(new Date("2025-01-02T03:04:05Z")) });
  const response = create(GetJobResponseSchema, { job });
  const getJob = real("GetJob");
  // deno-lint-ignore no-explicit-any
  const json = responseToJson(getJob, response) as Record<string, any>;
  assert.equal(json.job.name, "jobs/j1");
  assert.equal(json.job.priority, "PRIORITY_HIGH");
  assert.equal(json.job.createTime, "2025-01-02T03:04:05Z");
  assert.equal(json.job.pipelineVersion, 0, "implicit defaults are emitted");
  assert.equal(json.job.etag, "");
  assert.deepEqual(responseToJson({ ...getJob, responseBody: "job" }, response), json.job);
  assert.deepEqual(messageToJson(job), json.job);
  const probeOut = responseToJson(probe(), create(probeMethod.output as DescMessage, { big: 5n } as never)) as Record<string, unknown>;
  assert.equal(probeOut.big, "5");
  assert.deepEqual(probeOut.ids, []);
});

Deno.test("transcode - keys named like Object.prototype members are fields like any other: refused when unknown, counted once", () => {
  // body "*": the whole request comes from the body object.
  assertFieldError(() => requestFromHttp(real("CreateJobs"), vars(), q(""), JSON.parse('{"__proto__": {"requests": []}}')), "__proto__");
  const m = fieldsOf(requestFromHttp(probe(), vars(), q("labels[toString]=a&labels[constructor]=b"), undefined));
  assert.deepEqual(m.labels, { toString: "a", constructor: "b" });
});

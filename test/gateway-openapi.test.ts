/**
 * The gateway's OpenAPI document, built in Node from the same web-standard module the Deno
 * gateway serves (internal/gateway/openapi.ts): a real OpenAPI 3.1 validator accepts it, every
 * http binding of every service has its operation, the schemas compile as JSON Schema 2020-12
 * and describe real proto3 JSON, and the protovalidate constraints show up.
 */
import { create, toJson } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Validator } from "@seriousme/openapi-schema-validator";
import { Ajv2020 } from "ajv/dist/2020.js";
import t from "tap";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { JobSchema, Priority } from "../gen/jobmesh/v1/jobs_pb.js";
import { httpBindingsOfServices, meshRegistry, meshServices } from "../internal/contract/index.ts";
import { buildOpenApiDocument, openApiPathOf, schemaRefOf } from "../internal/gateway/openapi.ts";
import { matchPathTemplate, parsePathTemplate } from "../internal/gateway/path-template.ts";

/** The document is plain JSON walked by key. */
type Json = any;

const bindings = httpBindingsOfServices(meshServices);
const doc: Json = buildOpenApiDocument(bindings, { version: "0.1.0", serverUrl: "http://127.0.0.1:8080" });
const operations = Object.entries(doc.paths as Record<string, Record<string, Json>>).flatMap(([path, item]) =>
  Object.entries(item).map(([verb, operation]) => ({ path, verb, operation })),
);

void t.test("openapi - a real OpenAPI 3.1 validator accepts the document (and refuses a broken copy)", async (t) => {
  const result = await new Validator().validate(structuredClone(doc));
  t.same(result.errors, undefined, "no errors");
  t.ok(result.valid);
  const broken = structuredClone(doc);
  broken.paths["/v1/jobs"].get.parameters[0].in = "body";
  t.notOk((await new Validator().validate(broken)).valid, "the validator is not vacuous");
});

void t.test("openapi - every binding of meshServices has its path and operation, and nothing else is there", async (t) => {
  t.equal(operations.length, bindings.length);
  for (const binding of bindings) {
    const { path } = openApiPathOf(binding);
    const operation = doc.paths[path]?.[binding.verb.toLowerCase()];
    t.ok(operation, `${binding.verb} ${binding.path} → ${path}`);
    t.match(operation?.operationId, new RegExp(`^${binding.method.parent.name}_${binding.method.name}`));
    // The documented path, filled in, reaches the binding the gateway routes by.
    const concrete = path.replace(/\{[^}]+\}/g, "x1");
    t.ok(matchPathTemplate(parsePathTemplate(binding.path), concrete), `${concrete} matches ${binding.path}`);
  }
  t.equal(new Set(operations.map((o) => o.operation.operationId)).size, operations.length, "operationIds are unique");
  t.ok(doc.paths["/v1/jobs/{job}:cancel"]?.post, "custom verbs stay");
  t.same(doc.paths["/v1/auth:login"].post.security, [], "login is public");
  t.equal(doc.paths["/v1/jobs"].post["x-jobmesh-permission"], "jobs.create");
});

void t.test("openapi - protovalidate constraints and field behaviours appear as JSON Schema keywords", async (t) => {
  const schemas = doc.components.schemas;
  const watch = doc.paths["/v1/jobs/{job}:watch"].get;
  t.same(watch.parameters.find((p: Json) => p.name === "afterSequence").schema.minimum, 0, "int64 gte");
  const upload = doc.paths["/v1/uploads"].post;
  t.equal(upload.parameters.find((p: Json) => p.name === "filename").schema.maxLength, 255, "UploadMetadata.filename max_len");
  const list = doc.paths["/v1/jobs"].get.parameters.find((p: Json) => p.name === "pageSize");
  t.same([list.schema.minimum, list.schema.maximum], [0, 1000], "int32 gte/lte");
  const batch = schemas["jobmesh.v1.CreateJobsRequest.input"].properties.requests;
  t.same([batch.minItems, batch.maxItems], [1, 1000], "repeated min_items/max_items");
  const job = schemas["jobmesh.v1.Job.input"];
  t.same(job.required, ["document"], "REQUIRED → required");
  t.equal(job.additionalProperties, false, "request bodies refuse unknown fields");
  t.equal(schemas["jobmesh.v1.Job"].additionalProperties, undefined, "responses do not");
  t.equal(job.properties.state.readOnly, true, "OUTPUT_ONLY → readOnly");
  t.equal(schemas["jobmesh.v1.Document.input"].properties.text.writeOnly, true, "INPUT_ONLY → writeOnly");
  t.equal(schemas["jobmesh.v1.Document.input"].properties.url.format, "uri");
  t.match(schemas["jobmesh.v1.Job"].properties.pipeline.anyOf[1], { maxLength: 80, pattern: "^pipelines/" });
  const getJob = doc.paths["/v1/jobs/{job}"].get;
  t.match(getJob.parameters[0].description, "`name` = `jobs/{job}`");
  t.same(Object.keys(doc.paths["/v1/jobs/{job}:watch"].get.responses["200"].content).sort(), ["application/x-ndjson", "text/event-stream"]);
});

void t.test("openapi - schemas compile as JSON Schema 2020-12 and describe real proto3 JSON", async (t) => {
  const ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: true });
  const base = "https://jobmesh.invalid/openapi.json";
  ajv.addSchema({ $id: base, components: doc.components });
  const validatorOf = (ref: string) => {
    const validate = ajv.getSchema(base + ref);
    if (!validate) throw new Error(`no schema ${ref}`);
    return validate;
  };
  for (const name of Object.keys(doc.components.schemas)) validatorOf(`#/components/schemas/${name}`); // every component compiles

  const job = create(JobSchema, {
    name: "jobs/abc",
    pipeline: "pipelines/document-default",
    pipelineVersion: 3,
    state: JobState.RUNNING,
    priority: Priority.HIGH,
    labels: { team: "docs" },
    document: { source: { case: "upload", value: "uploads/u1" }, sizeBytes: 12n, filename: "a.pdf" },
    createTime: timestampFromDate(new Date("2025-01-02T03:04:05Z")),
  });
  const json = toJson(JobSchema, job, { alwaysEmitImplicit: true, registry: meshRegistry }) as Json;
  const output = validatorOf(schemaRefOf(JobSchema).$ref);
  t.ok(output(json), `a Job as the gateway writes it: ${JSON.stringify(output.errors)}`);
  t.ok(output({ ...json, addedLater: 1 }), "a response may carry a field added later");
  t.notOk(output({ ...json, document: { ...json.document, sizeBytes: 12 } }), "int64 is a string in responses");
  t.notOk(output({ ...json, state: "NOT_A_STATE" }), "enums by name");
  t.notOk(output({ ...json, pipeline: "pipelines/UPPER" }), "the pipeline pattern holds");

  const input = validatorOf("#/components/schemas/jobmesh.v1.Job.input");
  t.ok(input({ document: { text: "hello" }, priority: "PRIORITY_HIGH", labels: { team: "docs" } }), `a CreateJob body: ${JSON.stringify(input.errors)}`);
  t.notOk(input({ document: { text: "hello" }, surprise: true }), "unknown fields are refused");
  t.notOk(input({ priority: "PRIORITY_HIGH" }), "document is required");
  t.notOk(input({ document: { text: "hello" }, labels: { "Bad Key": "x" } }), "map key pattern");

  const status = validatorOf("#/components/schemas/Status");
  t.ok(status({ code: 3, message: "bad", details: [{ "@type": "type.googleapis.com/google.rpc.BadRequest", fieldViolations: [] }] }), "a Status body");
  t.notOk(status({ code: 3, message: "bad", details: [{ fieldViolations: [] }] }), "details carry @type");
});

import assert from "node:assert/strict";
import { accessRuleOf, httpBindingsOfServices, meshServices, type HttpBinding } from "../contract/index.ts";
// @deno-types="../../gen/jobmesh/v1/jobs_pb.d.ts"
import { JobService, UploadMetadataSchema, WatchJobRequestSchema } from "../../gen/jobmesh/v1/jobs_pb.js";
import { SchemaCollector } from "./json-schema.ts";
import { buildOpenApiDocument, openApiPathOf, schemaRefOf, singular } from "./openapi.ts";
import { matchPathTemplate, parsePathTemplate } from "./path-template.ts";

const bindings = httpBindingsOfServices(meshServices);
// deno-lint-ignore no-explicit-any
const doc = buildOpenApiDocument(bindings, { version: "1.2.3", serverUrl: "http://127.0.0.1:8080" }) as any;
const operationOf = (b: HttpBinding) => doc.paths[openApiPathOf(b).path][b.verb.toLowerCase()];

Deno.test("openapi path - variables become one parameter per *, named after the collection, verbs stay", () => {
  const pathOf = (template: string) => {
    const binding = bindings.find((b) => b.path === template);
    assert.ok(binding, template);
    const { path, parameters } = openApiPathOf(binding);
    return [path, parameters.map((p) => `${p.name}:${p.fieldPath}=${p.fieldTemplate}`)];
  };
  assert.deepEqual(pathOf("/v1/{name=jobs/*}"), ["/v1/jobs/{job}", ["job:name=jobs/{job}"]]);
  assert.deepEqual(pathOf("/v1/{name=jobs/*}:cancel"), ["/v1/jobs/{job}:cancel", ["job:name=jobs/{job}"]]);
  assert.deepEqual(pathOf("/v1/{name=jobs/*/result}:download"), ["/v1/jobs/{job}/result:download", ["job:name=jobs/{job}/result"]]);
  assert.deepEqual(pathOf("/v1/{user.name=users/*}"), ["/v1/users/{user}", ["user:user.name=users/{user}"]]);
  assert.deepEqual(pathOf("/v1/{parent=pipelines/*}/versions"), ["/v1/pipelines/{pipeline}/versions", ["pipeline:parent=pipelines/{pipeline}"]]);
  assert.deepEqual(pathOf("/v1/{name=webhooks/*/deliveries/*}:replay"), [
    "/v1/webhooks/{webhook}/deliveries/{delivery}:replay",
    ["webhook:name=webhooks/{webhook}/deliveries/{delivery}", "delivery:name=webhooks/{webhook}/deliveries/{delivery}"],
  ]);
  assert.deepEqual(pathOf("/v1/auth:login"), ["/v1/auth:login", []]);
  assert.deepEqual(pathOf("/.well-known/jwks.json"), ["/.well-known/jwks.json", []]);
  assert.deepEqual(["jobs", "deliveries", "apiKeys", "auditEvents", "status", "v1"].map(singular), ["job", "delivery", "apiKey", "auditEvent", "status", "v1"]);
});

Deno.test("openapi path - every real binding: filling the parameters gives a path its own template matches, with the field the parameters describe", () => {
  for (const binding of bindings) {
    const { path, parameters } = openApiPathOf(binding);
    assert.doesNotMatch(path, /[=*]/, path);
    const value = (name: string) => `v-${name}`;
    const concrete = path.replace(/\{([^}]+)\}/g, (_, name: string) => value(name));
    const variables = matchPathTemplate(parsePathTemplate(binding.path), concrete);
    assert.ok(variables, `${binding.path}: ${concrete} does not match`);
    for (const p of parameters) {
      const expected = p.fieldTemplate.replace(/\{([^}]+)\}/g, (_, name: string) => value(name));
      assert.equal(variables.get(p.fieldPath), expected, `${binding.path} ${p.name}`);
    }
    assert.equal(parameters.length, (path.match(/\{/g) ?? []).length, path);
  }
});

Deno.test("openapi - one operation per binding, with its id, tag, permission and path parameters", () => {
  assert.equal(doc.openapi, "3.1.0");
  assert.deepEqual(doc.servers, [{ url: "http://127.0.0.1:8080" }]);
  assert.equal(doc.info.version, "1.2.3");
  const ids = new Set<string>();
  for (const binding of bindings) {
    const operation = operationOf(binding);
    assert.ok(operation, `${binding.verb} ${binding.path}`);
    assert.match(operation.operationId, new RegExp(`^${binding.method.parent.name}_${binding.method.name}(_\\d+)?$`));
    assert.ok(!ids.has(operation.operationId), operation.operationId);
    ids.add(operation.operationId);
    assert.deepEqual(operation.tags, [binding.method.parent.name]);
    const rule = accessRuleOf(binding.method);
    if (rule.kind === "public") {
      assert.equal(operation["x-jobmesh-permission"], "public");
      assert.deepEqual(operation.security, [], `${operation.operationId} is public`);
    } else {
      assert.equal(operation["x-jobmesh-permission"], rule.permission);
      assert.ok(operation.description.includes(rule.permission));
      assert.equal(operation.security, undefined, "inherits the document's bearer/API key security");
    }
    for (const p of openApiPathOf(binding).parameters) {
      assert.ok(operation.parameters.some((q: { name: string; in: string }) => q.name === p.name && q.in === "path"), `${operation.operationId} ${p.name}`);
    }
    for (const status of ["400", "401", "403", "404", "409", "429", "500", "501", "503", "504"]) {
      assert.ok(operation.responses[status]?.$ref, `${operation.operationId} ${status}`);
    }
  }
  assert.deepEqual(Object.keys(doc.components.securitySchemes).sort(), ["apiKey", "bearerAuth"]);
  assert.equal(doc.components.securitySchemes.apiKey.name, "x-api-key");
  assert.equal(doc.components.responses.BadRequest.content["application/json"].schema.$ref, "#/components/schemas/Status");
});

Deno.test("openapi - query parameters for what the path and body leave; bodies whole, by field, or minus the path", () => {
  const listJobs = doc.paths["/v1/jobs"].get;
  assert.deepEqual(listJobs.parameters.map((p: { name: string }) => p.name), ["pageSize", "pageToken", "filter", "orderBy"]);
  assert.deepEqual(listJobs.parameters[0].schema, { type: "integer", format: "int32", minimum: 0, maximum: 1000 });
  const createJob = doc.paths["/v1/jobs"].post;
  assert.equal(createJob.requestBody.content["application/json"].schema.$ref, "#/components/schemas/jobmesh.v1.Job.input");
  assert.deepEqual(createJob.parameters.map((p: { name: string }) => p.name), ["requestId"]);
  const cancel = doc.paths["/v1/jobs/{job}:cancel"].post;
  const body = cancel.requestBody.content["application/json"].schema;
  assert.deepEqual(body.properties, {}, "name comes from the path");
  assert.equal(body.additionalProperties, false);
  const retry = doc.paths["/v1/jobs/{job}:retry"].post.requestBody.content["application/json"].schema;
  assert.deepEqual(Object.keys(retry.properties), ["fromStage"]);
  const update = doc.paths["/v1/users/{user}"].patch;
  assert.equal(update.requestBody.content["application/json"].schema.$ref, "#/components/schemas/jobmesh.v1.User.update");
  assert.equal(doc.components.schemas["jobmesh.v1.User.update"].required, undefined, "an update sends only what it changes");
  assert.ok(update.parameters.some((p: { name: string; in: string }) => p.name === "updateMask" && p.in === "query"));
});

Deno.test("openapi - streams: SSE and NDJSON for WatchJob, bytes for downloads and uploads", () => {
  const watch = doc.paths["/v1/jobs/{job}:watch"].get;
  assert.deepEqual(Object.keys(watch.responses["200"].content).sort(), ["application/x-ndjson", "text/event-stream"]);
  assert.equal(watch.responses["200"].content["application/x-ndjson"].schema.properties.result.$ref, "#/components/schemas/jobmesh.v1.WatchJobResponse");
  assert.ok(watch.parameters.some((p: { name: string }) => p.name === "afterSequence"));
  const download = doc.paths["/v1/jobs/{job}/result:download"].get;
  assert.deepEqual(download.responses["200"].content, { "application/octet-stream": { schema: { type: "string", format: "binary" } } });
  const upload = doc.paths["/v1/uploads"].post;
  assert.deepEqual(Object.keys(upload.requestBody.content).sort(), ["application/octet-stream", "multipart/form-data"]);
  assert.deepEqual(upload.requestBody.content["multipart/form-data"].schema.required, ["file"]);
  assert.deepEqual(upload.parameters.map((p: { name: string }) => p.name), ["filename", "sha256"]);
  assert.equal(doc.paths["/v1/jobs"].get.responses["413"], undefined, "no body, no 413");
  assert.ok(upload.responses["413"]);
});

Deno.test("json schema - protovalidate rules, field behaviours and the proto3 JSON forms", () => {
  const schemas = new SchemaCollector();
  assert.deepEqual(schemaRefOf(WatchJobRequestSchema), { $ref: "#/components/schemas/jobmesh.v1.WatchJobRequest" });
  schemas.ref(WatchJobRequestSchema, "input");
  const watch = schemas.components["jobmesh.v1.WatchJobRequest.input"];
  // deno-lint-ignore no-explicit-any
  const props = watch.properties as any;
  assert.deepEqual(props.name, { type: "string", maxLength: 80, pattern: "^jobs/[a-z0-9][a-z0-9-]{0,62}$" });
  assert.deepEqual(props.afterSequence, { type: ["string", "integer"], format: "int64", minimum: 0 });
  assert.deepEqual(watch.required, ["name"]);
  assert.equal(watch.additionalProperties, false);

  schemas.ref(UploadMetadataSchema, "output");
  // deno-lint-ignore no-explicit-any
  const upload = schemas.components["jobmesh.v1.UploadMetadata"] as any;
  assert.equal(upload.properties.filename.maxLength, 255);
  assert.deepEqual(upload.properties.sizeBytes, { type: "string", format: "int64", minimum: 0 }, "int64 is a string in responses");
  assert.equal(upload.properties.sha256.anyOf[0].const, "", "IGNORE_IF_ZERO_VALUE lets the empty string through");
  assert.equal(upload.additionalProperties, undefined, "responses may grow fields");
  assert.equal(upload.required, undefined);

  const create = JobService.method.createJob;
  schemas.ref(create.input, "input");
  // deno-lint-ignore no-explicit-any
  const job = schemas.components["jobmesh.v1.Job.input"] as any;
  assert.deepEqual(job.required, ["document"]);
  assert.equal(job.properties.state.readOnly, true);
  assert.equal(job.properties.createTime.$ref, "#/components/schemas/google.protobuf.Timestamp");
  assert.equal(job.properties.labels.maxProperties, 64);
  assert.equal(job.properties.labels.propertyNames.pattern, "^[a-z][a-z0-9_.-]*$");
  // deno-lint-ignore no-explicit-any
  const document = schemas.components["jobmesh.v1.Document.input"] as any;
  assert.equal(document.properties.content.writeOnly, true);
  assert.equal(document.properties.content.contentEncoding, "base64");
  assert.equal(document.properties.url.format, "uri");
  assert.match(document.description, /Exactly one of `content`, `text`, `url`, `upload`/);
  assert.deepEqual(schemas.components["google.protobuf.Timestamp"].format, "date-time");
  // deno-lint-ignore no-explicit-any
  const state = schemas.components["jobmesh.v1.JobState"] as any;
  assert.equal(state.type, "string");
  assert.ok(state.enum.includes("SUCCEEDED") || state.enum.includes("JOB_STATE_SUCCEEDED"));
});

import assert from "node:assert/strict";
import { httpBindingsOfServices, meshServices, type HttpBinding } from "../contract/index.ts";
import type { PathTemplate } from "./path-template.ts";
import { createRouteTable } from "./routes.ts";

const bindings = httpBindingsOfServices(meshServices);
const table = createRouteTable(bindings);

/** A concrete path for a template: each "*" becomes "x<i>", "**" two segments. */
function examplePath(t: PathTemplate): string {
  const segments = t.segments.map((s, i) => (s.kind === "literal" ? s.value : s.kind === "wildcard" ? `x${i}` : `d${i}/e${i}`));
  return `/${segments.join("/")}${t.verb === undefined ? "" : `:${t.verb}`}`;
}

const nameOf = (b: HttpBinding) => `${b.method.parent.typeName}.${b.method.name}`;

Deno.test("routes - every binding of meshServices matches its own example path, with its variables", () => {
  assert.ok(table.routes.length >= 40, `only ${table.routes.length} routes`);
  assert.equal(table.routes.length, bindings.length);
  for (const { binding, template } of table.routes) {
    const path = examplePath(template);
    const found = table.match(binding.verb, path);
    assert.equal(found.kind, "match", `${binding.verb} ${path}`);
    if (found.kind !== "match") continue;
    assert.equal(nameOf(found.binding), nameOf(binding), `${binding.verb} ${path}`);
    assert.deepEqual([...found.variables.keys()], template.variables.map((v) => v.fieldPath));
  }
});

Deno.test("routes - real paths: values, nested variables and custom verbs", () => {
  const cancel = table.match("POST", "/v1/jobs/j1:cancel");
  assert.equal(cancel.kind, "match");
  if (cancel.kind === "match") {
    assert.equal(cancel.binding.method.name, "CancelJob");
    assert.deepEqual(Object.fromEntries(cancel.variables), { name: "jobs/j1" });
  }
  const update = table.match("PATCH", "/v1/users/u1");
  assert.ok(update.kind === "match" && update.binding.method.name === "UpdateUser" && update.variables.get("user.name") === "users/u1");
  const watch = table.match("GET", "/v1/jobs/j1:watch");
  assert.ok(watch.kind === "match" && watch.binding.method.name === "WatchJob", "the :watch route, not GetJob of jobs/j1:watch");
  const download = table.match("GET", "/v1/jobs/j1/result:download");
  assert.ok(download.kind === "match" && download.binding.method.name === "DownloadJobResult");
  const result = table.match("GET", "/v1/jobs/j1/result");
  assert.ok(result.kind === "match" && result.binding.method.name === "GetJobResult");
  const jwks = table.match("GET", "/.well-known/jwks.json");
  assert.ok(jwks.kind === "match" && jwks.binding.method.name === "GetJwks");
});

Deno.test("routes - an unknown path is not_found", () => {
  for (const path of ["/", "/v1", "/v1/nothing", "/v2/jobs", "/v1/jobs/j1/extra", "/v1/jobs/..", "/v1/jobs/a%2Fb", "/v1/jobs:nope"]) {
    assert.deepEqual(table.match("GET", path), { kind: "not_found" }, path);
  }
});

Deno.test("routes - a wrong verb is 405 with every verb the path allows", () => {
  assert.deepEqual(table.match("PUT", "/v1/jobs/j1"), { kind: "method_not_allowed", allow: ["DELETE", "GET", "HEAD"] });
  assert.deepEqual(table.match("DELETE", "/v1/jobs"), { kind: "method_not_allowed", allow: ["GET", "HEAD", "POST"] });
  assert.deepEqual(table.match("GET", "/v1/jobs/j1:cancel"), { kind: "method_not_allowed", allow: ["POST"] });
  assert.deepEqual(table.match("GET", "/v1/auth:login"), { kind: "method_not_allowed", allow: ["POST"] });
  // Every route, asked with a verb it does not have, answers 405 naming its own verb.
  for (const { binding, template } of table.routes) {
    const path = examplePath(template);
    const other = ["GET", "POST", "PUT", "PATCH", "DELETE"].find((v) => {
      const m = table.match(v, path);
      return m.kind === "method_not_allowed";
    });
    assert.ok(other, `${binding.verb} ${path} allows every verb?`);
    const m = table.match(other, path);
    assert.ok(m.kind === "method_not_allowed" && m.allow.includes(binding.verb), `${other} ${path}`);
  }
});

Deno.test("routes - HEAD is answered by the GET route", () => {
  const head = table.match("HEAD", "/v1/jobs/j1");
  assert.ok(head.kind === "match" && head.binding.method.name === "GetJob" && head.binding.verb === "GET");
});

const getJob = bindings.find((b) => b.method.name === "GetJob")!;
const fake = (path: string, verb = "GET"): HttpBinding => ({ ...getJob, path, verb });

Deno.test("routes - a literal segment beats a wildcard when both templates match", () => {
  const special = fake("/v1/jobs/special");
  const generic = fake("/v1/{name=jobs/*}");
  const deep = fake("/v1/{name=**}");
  for (const order of [[special, generic, deep], [deep, generic, special]]) {
    const t = createRouteTable(order);
    assert.ok(t.match("GET", "/v1/jobs/special").kind === "match");
    const hit = t.match("GET", "/v1/jobs/special");
    assert.equal(hit.kind === "match" && hit.binding.path, "/v1/jobs/special");
    const other = t.match("GET", "/v1/jobs/x");
    assert.equal(other.kind === "match" && other.binding.path, "/v1/{name=jobs/*}");
    const far = t.match("GET", "/v1/a/b/c");
    assert.equal(far.kind === "match" && far.binding.path, "/v1/{name=**}");
  }
});

Deno.test("routes - two bindings with the same verb and template shape are refused", () => {
  assert.throws(() => createRouteTable([fake("/v1/{name=jobs/*}"), fake("/v1/{name=jobs/*}")]), /clashes/);
  assert.throws(() => createRouteTable([fake("/v1/{name=jobs/*}"), fake("/v1/jobs/{name}")]), /clashes/);
  assert.doesNotThrow(() => createRouteTable([fake("/v1/{name=jobs/*}"), fake("/v1/{name=jobs/*}", "DELETE")]));
});

Deno.test("routes - a path variable must name a string field of the request", () => {
  assert.throws(() => createRouteTable([fake("/v1/{nope=jobs/*}")]), /has no field "nope"/);
  assert.throws(() => createRouteTable([fake("/v1/{name.x=jobs/*}")]), /not a message field/);
});

Deno.test("routes - the index keeps templates whose first segment is a wildcard, that end in **, or carry a verb on their only segment", () => {
  const t = createRouteTable([fake("/{name=*}:cancel", "POST"), fake("/jobs:batch", "POST"), fake("/{name=*}/jobs"), fake("/v1/{name=**}"), fake("/v2/{name=*}/x")]);
  const second = t.match("GET", "/v2/a:b/x");
  assert.ok(second.kind === "match" && second.variables.get("name") === "a:b", "a wildcard in the second place, with a ':' in its value");
  assert.deepEqual(t.match("GET", "/v2%2Fa/x"), { kind: "not_found" }, "an encoded '/' is no separator");
  const cancel = t.match("POST", "/x:cancel");
  assert.equal(cancel.kind === "match" && cancel.binding.path, "/{name=*}:cancel");
  const batch = t.match("POST", "/jobs:batch");
  assert.equal(batch.kind === "match" && batch.binding.path, "/jobs:batch");
  const nested = t.match("GET", "/any/jobs");
  assert.ok(nested.kind === "match" && nested.variables.get("name") === "any");
  for (const path of ["/v1/a", "/v1/a/b/c/d/e"]) {
    const deep = t.match("GET", path);
    assert.equal(deep.kind === "match" && deep.binding.path, "/v1/{name=**}", path);
  }
  assert.deepEqual(t.match("GET", "/x:cancel"), { kind: "method_not_allowed", allow: ["POST"] });
  assert.deepEqual(t.match("POST", "/jobs%3Abatch"), { kind: "not_found" });
  assert.deepEqual(t.match("GET", "/%zz/jobs"), { kind: "not_found" }, "malformed percent-encoding is refused by the wildcard too");
});

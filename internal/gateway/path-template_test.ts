import assert from "node:assert/strict";
import { matchPathTemplate, parsePathTemplate } from "./path-template.ts";

const match = (template: string, path: string) => {
  const found = matchPathTemplate(parsePathTemplate(template), path);
  return found && Object.fromEntries(found);
};

Deno.test("parse - a variable with a pattern spans its segments", () => {
  const t = parsePathTemplate("/v1/{name=jobs/*}");
  assert.deepEqual(t.segments, [{ kind: "literal", value: "v1" }, { kind: "literal", value: "jobs" }, { kind: "wildcard" }]);
  assert.deepEqual(t.variables, [{ fieldPath: "name", start: 1, end: 3 }]);
  assert.equal(t.verb, undefined);
});

Deno.test("parse - {x} alone means {x=*}, nested field paths and custom verbs", () => {
  const t = parsePathTemplate("/v1/{user.name=users/*}/{id}:cancel");
  assert.deepEqual(t.variables, [
    { fieldPath: "user.name", start: 1, end: 3 },
    { fieldPath: "id", start: 3, end: 4 },
  ]);
  assert.equal(t.verb, "cancel");
  assert.equal(parsePathTemplate("/v1/auth:login").verb, "login");
  assert.deepEqual(parsePathTemplate("/v1/auth:login").segments, [{ kind: "literal", value: "v1" }, { kind: "literal", value: "auth" }]);
  assert.equal(parsePathTemplate("/.well-known/jwks.json").segments.length, 2);
});

Deno.test("parse - bad syntax throws an error naming the template", () => {
  for (const bad of ["v1/jobs", "/v1/{name=jobs/*", "/v1/{a={b}}", "/v1//jobs", "/v1/{na-me}", "/v1/{name=**}/x", "/v1/../x", "/v1/{a}/{a}", "/v1/x:", "/v1/{}"]) {
    assert.throws(() => parsePathTemplate(bad), (e: Error) => e.message.includes(`"${bad}"`), bad);
  }
});

Deno.test("match - variables get their segments, joined by / when they span several", () => {
  assert.deepEqual(match("/v1/{name=jobs/*}", "/v1/jobs/abc"), { name: "jobs/abc" });
  assert.deepEqual(match("/v1/{name=jobs/*/result}", "/v1/jobs/abc/result"), { name: "jobs/abc/result" });
  assert.deepEqual(match("/v1/{parent=pipelines/*}/versions", "/v1/pipelines/p1/versions"), { parent: "pipelines/p1" });
  assert.deepEqual(match("/v1/{id}", "/v1/42"), { id: "42" });
  assert.equal(match("/v1/{name=jobs/*}", "/v1/pipelines/abc"), undefined);
  assert.equal(match("/v1/{name=jobs/*}", "/v1/jobs/abc/more"), undefined);
  assert.equal(match("/v1/{name=jobs/*}", "/v1/jobs"), undefined);
  assert.equal(match("/v1/jobs", "/v1/jobs/"), undefined);
});

Deno.test("match - nested field paths such as {user.name=users/*}", () => {
  assert.deepEqual(match("/v1/{user.name=users/*}", "/v1/users/u1"), { "user.name": "users/u1" });
});

Deno.test("match - ** takes zero or more segments", () => {
  assert.deepEqual(match("/v1/{name=files/**}", "/v1/files/a/b/c"), { name: "files/a/b/c" });
  assert.deepEqual(match("/v1/{name=files/**}", "/v1/files/a"), { name: "files/a" });
  assert.deepEqual(match("/v1/{name=files/**}", "/v1/files"), { name: "files" });
  assert.deepEqual(match("/v1/{path=**}:stat", "/v1/a/b:stat"), { path: "a/b" });
  assert.deepEqual(match("/v1/**", "/v1/x/y"), {});
});

Deno.test("match - custom verbs: /v1/{name=jobs/*}:cancel", () => {
  assert.deepEqual(match("/v1/{name=jobs/*}:cancel", "/v1/jobs/abc:cancel"), { name: "jobs/abc" });
  assert.equal(match("/v1/{name=jobs/*}:cancel", "/v1/jobs/abc"), undefined);
  assert.equal(match("/v1/{name=jobs/*}:cancel", "/v1/jobs/abc:retry"), undefined);
  assert.deepEqual(match("/v1/auth:login", "/v1/auth:login"), {});
  assert.equal(match("/v1/auth:login", "/v1/auth"), undefined);
  // Without a verb in the template, a ":" is part of the segment.
  assert.deepEqual(match("/v1/{name=jobs/*}", "/v1/jobs/a:b"), { name: "jobs/a:b" });
});

Deno.test("match - values are percent-decoded", () => {
  assert.deepEqual(match("/v1/{name=jobs/*}", "/v1/jobs/h%C3%A9llo%20world"), { name: "jobs/héllo world" });
  assert.deepEqual(match("/v1/{name=jobs/*}", "/v1/%6Aobs/x"), { name: "jobs/x" }, "an encoded literal is still the literal");
  assert.equal(match("/v1/{name=jobs/*}", "/v1/jobs/%E0%A4%A"), undefined, "malformed encoding");
});

Deno.test("match - traversal: dot segments and encoded slashes are refused", () => {
  for (const path of ["/v1/jobs/..", "/v1/jobs/.", "/v1/jobs/%2e%2e", "/v1/jobs/%2E", "/v1/x/../jobs/abc", "/v1/jobs//abc"]) {
    assert.equal(match("/v1/{name=jobs/*}", path), undefined, path);
    assert.equal(match("/v1/{name=**}", path), undefined, path);
  }
  assert.equal(match("/v1/{name=jobs/*}", "/v1/jobs/a%2F..%2Fb"), undefined, "a decoded / inside a single-segment variable");
  assert.equal(match("/v1/{id}", "/v1/a%2fb"), undefined);
  // In a multi-segment variable an encoded "/" stays encoded (http.proto), so it is no separator.
  assert.deepEqual(match("/v1/{name=files/**}", "/v1/files/a%2Fb/c"), { name: "files/a%2Fb/c" });
});

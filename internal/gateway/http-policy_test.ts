import assert from "node:assert/strict";
import { applySecurityHeaders, createCorsPolicy } from "./http-policy.ts";

const app = "https://app.example.com";
const base = "http://127.0.0.1:8080/v1/jobs";

function preflightRequest(origin: string, method = "POST", headers = "authorization, content-type"): Request {
  return new Request(base, {
    method: "OPTIONS",
    headers: { origin, "access-control-request-method": method, "access-control-request-headers": headers },
  });
}

function varyOf(headers: Headers): string[] {
  return (headers.get("vary") ?? "").split(",").map((v) => v.trim().toLowerCase()).filter(Boolean);
}

Deno.test("CORS preflight - an allowed origin gets 204 with the methods, headers and max age", () => {
  const cors = createCorsPolicy([app]);
  const answer = cors.preflight(preflightRequest(app));
  assert.ok(answer);
  assert.equal(answer.status, 204);
  assert.equal(answer.headers.get("access-control-allow-origin"), app);
  const methods = answer.headers.get("access-control-allow-methods")!.split(", ");
  for (const m of ["GET", "POST", "PATCH", "DELETE"]) assert.ok(methods.includes(m), m);
  const allowed = answer.headers.get("access-control-allow-headers")!.split(", ");
  for (const h of ["authorization", "x-api-key", "content-type", "connect-protocol-version", "x-grpc-web", "last-event-id", "traceparent"]) {
    assert.ok(allowed.includes(h), h);
  }
  assert.equal(answer.headers.get("access-control-max-age"), "7200");
  assert.equal(answer.headers.get("access-control-allow-credentials"), null);
  assert.ok(varyOf(answer.headers).includes("origin"));
});

Deno.test("CORS preflight - an origin not listed is refused with 403 and no allow header", () => {
  const cors = createCorsPolicy([app]);
  for (const origin of ["https://evil.example.com", "https://app.example.com.evil.test", "http://app.example.com", "null"]) {
    const answer = cors.preflight(preflightRequest(origin));
    assert.ok(answer, origin);
    assert.equal(answer.status, 403, origin);
    assert.equal(answer.headers.get("access-control-allow-origin"), null, origin);
  }
  assert.equal(createCorsPolicy([]).preflight(preflightRequest(app))?.status, 403, "an empty list allows no origin");
});

Deno.test("CORS preflight - only a real preflight is answered; other requests pass on", () => {
  const cors = createCorsPolicy([app]);
  assert.equal(cors.preflight(new Request(base, { method: "OPTIONS" })), undefined, "OPTIONS without Origin");
  assert.equal(cors.preflight(new Request(base, { method: "OPTIONS", headers: { origin: app } })), undefined, "without Access-Control-Request-Method");
  assert.equal(cors.preflight(new Request(base, { method: "GET", headers: { origin: app } })), undefined, "an actual request");
});

Deno.test("CORS preflight - an origin listed in another case still matches; \"*\" only when configured", () => {
  assert.equal(createCorsPolicy(["https://App.Example.com"]).preflight(preflightRequest(app))?.status, 204);
  const any = createCorsPolicy(["*"]);
  const answer = any.preflight(preflightRequest("https://anyone.example.org"));
  assert.equal(answer?.status, 204);
  assert.equal(answer?.headers.get("access-control-allow-origin"), "*");
  assert.equal(answer?.headers.get("access-control-allow-credentials"), null, "never credentials with *");
});

Deno.test("CORS apply - an allowed origin's response names it, varies on Origin and exposes the limit and status headers", () => {
  const cors = createCorsPolicy([app]);
  const headers = new Headers({ vary: "Accept-Encoding" });
  cors.apply(new Request(base, { headers: { origin: app } }), headers);
  assert.equal(headers.get("access-control-allow-origin"), app);
  assert.deepEqual(varyOf(headers), ["accept-encoding", "origin"]);
  const exposed = headers.get("access-control-expose-headers")!.split(", ");
  for (const h of ["ratelimit", "ratelimit-policy", "retry-after", "x-request-id", "grpc-status", "grpc-message", "connect-content-encoding"]) {
    assert.ok(exposed.includes(h), h);
  }

  const other = new Headers();
  cors.apply(new Request(base, { headers: { origin: "https://evil.example.com" } }), other);
  assert.equal(other.get("access-control-allow-origin"), null);
  assert.equal(other.get("access-control-expose-headers"), null);
  assert.deepEqual(varyOf(other), ["origin"], "a cache keeps the answers of different origins apart");

  const twice = new Headers();
  cors.apply(new Request(base, { headers: { origin: app } }), twice);
  cors.apply(new Request(base, { headers: { origin: app } }), twice);
  assert.deepEqual(varyOf(twice), ["origin"]);
});

Deno.test("security headers - every answer: nosniff, no referrer, no framing, no content, same-origin, not stored", () => {
  const headers = new Headers({ "content-type": "application/json" });
  applySecurityHeaders(headers);
  assert.equal(headers.get("x-content-type-options"), "nosniff");
  assert.equal(headers.get("referrer-policy"), "no-referrer");
  assert.equal(headers.get("x-frame-options"), "DENY");
  assert.equal(headers.get("content-security-policy"), "default-src 'none'; frame-ancestors 'none'");
  assert.equal(headers.get("cross-origin-resource-policy"), "same-origin");
  assert.equal(headers.get("cache-control"), "no-store");
});

Deno.test("security headers - the docs page keeps its own CSP, an answer its own Cache-Control", () => {
  const docsCsp = "default-src 'self'; frame-ancestors 'none'";
  const headers = new Headers({ "cache-control": "public, max-age=3600" });
  applySecurityHeaders(headers, { contentSecurityPolicy: docsCsp });
  assert.equal(headers.get("content-security-policy"), docsCsp);
  assert.equal(headers.get("cache-control"), "public, max-age=3600");
  assert.equal(headers.get("x-frame-options"), "DENY");
});

import assert from "node:assert/strict";
import { createDocs } from "./docs.ts";

const files: Record<string, string> = {
  "swagger-ui.css": ".swagger-ui{}",
  "swagger-ui-bundle.js": "var SwaggerUIBundle;",
  "swagger-ui-standalone-preset.js": "var SwaggerUIStandalonePreset;",
};
const reads: string[] = [];
const docs = createDocs({
  readAsset: (name) => {
    reads.push(name);
    return Promise.resolve(name in files ? new TextEncoder().encode(files[name]) : undefined);
  },
});
const get = (path: string, method = "GET") => docs.handle(new Request(`http://127.0.0.1${path}`, { method }), path);

Deno.test("docs - the page loads Swagger UI from the gateway itself, with no inline script, under a 'self' CSP", async () => {
  const res = await get("/docs");
  assert.ok(res);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /^text\/html/);
  const csp = res.headers.get("content-security-policy") ?? "";
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|https?:/);
  const html = await res.text();
  for (const asset of ["swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"]) assert.ok(html.includes(`/docs/${asset}`), asset);
  assert.doesNotMatch(html, /<script>|<script(?![^>]*\bsrc=)[^>]*>/, "every script has a src");
  assert.doesNotMatch(html, /https?:\/\//, "no CDN");
  const init = html.match(/src="(\/docs\/[^"]*init[^"]*)"/)?.[1];
  assert.ok(init);
  const script = await get(init);
  assert.equal(script?.status, 200);
  assert.match(script?.headers.get("content-type") ?? "", /^text\/javascript/);
  assert.match(await script!.text(), /url: "\/openapi\.json"/);
});

Deno.test("docs - assets with their content type, read once; HEAD has no body", async () => {
  const css = await get("/docs/swagger-ui.css");
  assert.equal(css?.status, 200);
  assert.equal(css?.headers.get("content-type"), "text/css; charset=utf-8");
  assert.equal(await css?.text(), ".swagger-ui{}");
  const js = await get("/docs/swagger-ui-bundle.js");
  assert.equal(js?.headers.get("content-type"), "text/javascript; charset=utf-8");
  assert.equal(js?.headers.get("content-length"), String(files["swagger-ui-bundle.js"].length));
  await js?.body?.cancel();
  const again = await get("/docs/swagger-ui-bundle.js", "HEAD");
  assert.equal(again?.status, 200);
  assert.equal(again?.body, null);
  assert.equal(reads.filter((n) => n === "swagger-ui-bundle.js").length, 1);
});

Deno.test("docs - traversal, unknown files and missing assets are 404; other paths are not ours; writes are 405", async () => {
  for (const path of ["/docs/../package.json", "/docs/..%2Fpackage.json", "/docs/%2e%2e/package.json", "/docs/index.html", "/docs/swagger-ui.js.map", "/docs/favicon-16x16.png", "/docs/constructor", "/docs/toString", "/docs/__proto__"]) {
    const res = await get(path);
    assert.equal(res?.status, 404, path);
    assert.equal((await res?.json())?.code, 5, `${path}: a google.rpc.Status NOT_FOUND`);
  }
  assert.ok(!reads.some((n) => n.includes("..") || n.includes("/")), "no read outside the allow-list");
  assert.equal(await get("/docsx"), undefined);
  assert.equal(await get("/openapi.json"), undefined);
  const post = await get("/docs", "POST");
  assert.equal(post?.status, 405);
  assert.equal(post?.headers.get("allow"), "GET, HEAD");
});

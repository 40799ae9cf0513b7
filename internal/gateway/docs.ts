/**
 * GET /docs: the interactive API reference, Swagger UI from the swagger-ui-dist package, served by
 * the gateway itself (no CDN) and pointed at /openapi.json. The page has no inline script, so a
 * Content-Security-Policy of 'self' holds: the start-up code is a file of its own.
 */

import { Code, ConnectError } from "@connectrpc/connect";
import { errorResponse } from "./http-errors.ts";

/** Where the docs read swagger-ui-dist's files from. */
export interface DocsDeps {
  /** Reads node_modules/swagger-ui-dist/<name>; undefined when it is not there. The lead wires it with Deno.readFile. */
  readAsset(name: string): Promise<Uint8Array | undefined>;
}

/**
 * The page's policy: everything from the gateway itself. Images also from data: URLs, because
 * Swagger UI's stylesheet draws its icons as inline SVG images.
 */
export const docsContentSecurityPolicy =
  "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; connect-src 'self'; " +
  "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/** The swagger-ui-dist files the page loads, and their types. Only these are served: no path reaches the disk. */
const assetTypes: Readonly<Record<string, string>> = {
  "swagger-ui.css": "text/css; charset=utf-8",
  "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
  "swagger-ui-standalone-preset.js": "text/javascript; charset=utf-8",
  "favicon-32x32.png": "image/png",
  "favicon-16x16.png": "image/png",
};

const initScriptName = "jobmesh-docs-init.js";

const page = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>jobmesh API reference</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/swagger-ui-standalone-preset.js"></script>
  <script src="/docs/${initScriptName}"></script>
</body>
</html>
`;

// validatorUrl null: Swagger UI would otherwise send the document to validator.swagger.io.
const initScript = `window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    plugins: [SwaggerUIBundle.plugins.DownloadUrl],
    layout: "StandaloneLayout"
  });
});
`;

/** Answers GET /docs (an HTML page loading /docs/swagger-ui.css, /docs/swagger-ui-bundle.js, /docs/swagger-ui-standalone-preset.js? and a small init script file — no inline script, so a strict CSP holds) and GET /docs/<asset>; undefined for any other path. Sets a CSP that allows only 'self'. */
export function createDocs(deps: DocsDeps): { handle(req: Request, pathname: string): Promise<Response | undefined> } {
  // Read each asset once: swagger-ui-bundle.js is about 1.5 MB and never changes while we run.
  const cache = new Map<string, Promise<Uint8Array | undefined>>();
  const assetOf = (name: string) => {
    let asset = cache.get(name);
    if (!asset) {
      asset = deps.readAsset(name);
      cache.set(name, asset);
      // A failed read is not remembered: the next request tries again.
      asset.catch(() => cache.delete(name));
    }
    return asset;
  };
  const encoder = new TextEncoder();
  // A Map, not an object literal: "/docs/constructor" must not find Object.prototype's members.
  const ownFiles = new Map<string, { body: Uint8Array; type: string }>([
    ["", { body: encoder.encode(page), type: "text/html; charset=utf-8" }],
    [initScriptName, { body: encoder.encode(initScript), type: "text/javascript; charset=utf-8" }],
  ]);

  return {
    async handle(req, pathname) {
      if (pathname !== "/docs" && pathname !== "/docs/" && !pathname.startsWith("/docs/")) return undefined;
      if (req.method !== "GET" && req.method !== "HEAD") {
        const refusal = errorResponse(new ConnectError(`${req.method} is not allowed on ${pathname}; allowed: GET, HEAD`, Code.Unimplemented));
        refusal.headers.set("allow", "GET, HEAD");
        return new Response(refusal.body, { status: 405, headers: refusal.headers });
      }
      const name = pathname === "/docs" ? "" : pathname.slice("/docs/".length);
      const own = ownFiles.get(name);
      if (own) return fileResponse(req, own.body, own.type, "no-cache");
      const type = Object.hasOwn(assetTypes, name) ? assetTypes[name] : undefined;
      const body = type ? await assetOf(name) : undefined;
      if (!type || !body) return errorResponse(new ConnectError(`no such file: ${pathname}`, Code.NotFound));
      return fileResponse(req, body, type, "public, max-age=86400");
    },
  };
}

function fileResponse(req: Request, body: Uint8Array, type: string, cacheControl: string): Response {
  const headers = new Headers({
    "content-type": type,
    "content-length": String(body.byteLength),
    "cache-control": cacheControl,
    "content-security-policy": docsContentSecurityPolicy,
    "x-content-type-options": "nosniff",
  });
  return new Response(req.method === "HEAD" ? null : (body as Uint8Array<ArrayBuffer>), { headers });
}

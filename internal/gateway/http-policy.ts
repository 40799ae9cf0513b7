/**
 * What every answer of the gateway says about itself to a browser: CORS from the configured
 * allow-list, and the security headers of an API that serves no pages (the docs page sets its
 * own Content-Security-Policy).
 */
import { cors as connectCors } from "@connectrpc/connect";

/** Methods the REST routes and the Connect/gRPC-Web pass-through use. */
const allowedMethods = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/**
 * Request headers a script may send: Connect's and gRPC-Web's own (from @connectrpc/connect),
 * credentials, tracing, SSE resumption and the raw upload's file name.
 */
const allowedHeaders = uniqueLowerCase([
  ...connectCors.allowedHeaders,
  "authorization",
  "x-api-key",
  "x-request-id",
  "traceparent",
  "tracestate",
  "grpc-timeout",
  "last-event-id",
  "content-disposition",
]);

/** Response headers a script may read: rate limits, the request id, and the gRPC/Connect status headers. */
const exposedHeaders = uniqueLowerCase([
  "ratelimit",
  "ratelimit-policy",
  "retry-after",
  "x-request-id",
  "content-disposition",
  ...connectCors.exposedHeaders,
]);

/** How long a browser may reuse a preflight answer; 2 hours is the most Chromium honours. */
const preflightMaxAgeSeconds = 7200;

export interface CorsPolicy {
  /** The answer to a CORS preflight (OPTIONS with Origin and Access-Control-Request-Method); undefined for any other request. */
  preflight(req: Request): Response | undefined;
  /** Adds the CORS headers of an actual response, when its request came from an allowed origin. */
  apply(req: Request, headers: Headers): void;
}

/**
 * CORS from an allow-list of exact origins ("https://app.example.com"); "*" allows every origin,
 * and only when configured as such. Access-Control-Allow-Credentials is never sent: the API
 * authenticates with headers a script sets, never with cookies, so no origin needs a browser's
 * ambient credentials, and "*" can never be combined with them.
 */
export function createCorsPolicy(allowedOrigins: readonly string[]): CorsPolicy {
  const anyOrigin = allowedOrigins.includes("*");
  // Browsers send the origin serialised in lower case; a configured one may not be.
  const exact = new Set(allowedOrigins.filter((o) => o !== "*").map((o) => o.toLowerCase()));

  /** The Access-Control-Allow-Origin value for this Origin, or undefined when it is not allowed. */
  function allowOriginFor(origin: string | null): string | undefined {
    if (origin === null) return undefined;
    if (anyOrigin) return "*";
    return exact.has(origin.toLowerCase()) ? origin : undefined;
  }

  return {
    preflight(req) {
      const origin = req.headers.get("origin");
      if (req.method !== "OPTIONS" || origin === null || !req.headers.has("access-control-request-method")) return undefined;
      const headers = new Headers();
      // The answer depends on these, so a cache must not give one origin's answer to another.
      addVary(headers, "origin", "access-control-request-method", "access-control-request-headers");
      const allowOrigin = allowOriginFor(origin);
      if (!allowOrigin) return new Response(null, { status: 403, headers });
      headers.set("access-control-allow-origin", allowOrigin);
      headers.set("access-control-allow-methods", allowedMethods.join(", "));
      headers.set("access-control-allow-headers", allowedHeaders.join(", "));
      headers.set("access-control-max-age", String(preflightMaxAgeSeconds));
      return new Response(null, { status: 204, headers });
    },

    apply(req, headers) {
      if (!anyOrigin) addVary(headers, "origin");
      const allowOrigin = allowOriginFor(req.headers.get("origin"));
      if (!allowOrigin) return;
      headers.set("access-control-allow-origin", allowOrigin);
      headers.set("access-control-expose-headers", exposedHeaders.join(", "));
    },
  };
}

/** The CSP of an answer that is data, never a page: it may load nothing and be framed by no one. */
const apiContentSecurityPolicy = "default-src 'none'; frame-ancestors 'none'";

/**
 * Security headers for every response. An answer that set its own Cache-Control (the docs'
 * assets, SSE) keeps it; every other one is `no-store`, since API answers carry tenant data.
 */
export function applySecurityHeaders(headers: Headers, options?: { contentSecurityPolicy?: string }): void {
  headers.set("x-content-type-options", "nosniff");
  headers.set("referrer-policy", "no-referrer");
  headers.set("x-frame-options", "DENY");
  headers.set("content-security-policy", options?.contentSecurityPolicy ?? apiContentSecurityPolicy);
  headers.set("cross-origin-resource-policy", "same-origin");
  if (!headers.has("cache-control")) headers.set("cache-control", "no-store");
}

/** Adds field names to Vary, once each, keeping those already there. */
function addVary(headers: Headers, ...names: string[]): void {
  const present = (headers.get("vary") ?? "").split(",").map((v) => v.trim().toLowerCase()).filter(Boolean);
  if (present.includes("*")) return;
  const next = [...present, ...names.filter((n) => !present.includes(n))];
  headers.set("vary", next.join(", "));
}

function uniqueLowerCase(names: readonly string[]): string[] {
  return [...new Set(names.map((n) => n.toLowerCase()))];
}

/**
 * Fetches a document over http(s) for the ingest stage: redirects followed by hand and each hop
 * re-checked, the size limit enforced while the body streams, every connection made only to an
 * address the SSRF policy accepted (see internal/netpolicy).
 */
import { isIP } from "node:net";
import { Agent, request, errors as undiciErrors, type Dispatcher } from "undici";
import {
  createGuardedLookup, findBlockedAddressError, isForbiddenAddress, type AddressPolicy, type ConnectLookup,
} from "../netpolicy/index.ts";
import { PermanentStageError, TransientStageError, findStageError } from "./errors.ts";

/** Injected by the worker from its configuration, never from a pipeline. */
export interface FetchPolicy extends AddressPolicy {
  /** Redirects followed before giving up (default 5). */
  maxRedirects?: number;
  /** DNS resolver used for the guarded connect (default `dns.lookup`). */
  resolve?: ConnectLookup;
  /** User-Agent header sent (default "jobmesh-ingest/1"). */
  userAgent?: string;
}

/** A fetched document with what the response said about it. */
export interface FetchedDocument {
  bytes: Uint8Array;
  finalUrl: string;
  filename?: string;
  /** Media type from Content-Type, without parameters. */
  mediaTypeHint?: string;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const RETRYABLE_STATUS = new Set([408, 425, 429]);

/**
 * Parses and checks a URL (relative to `base`, for a redirect's Location): http/https only, and
 * an IP-literal host must pass the policy.
 */
export function checkFetchUrl(raw: string, policy: AddressPolicy, base?: URL): URL {
  let url: URL;
  try {
    url = new URL(raw, base);
  } catch (cause) {
    throw new PermanentStageError("invalid_source", "the document URL is not a valid URL", { cause });
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new PermanentStageError("invalid_source", `URL scheme ${url.protocol} is not allowed; use http or https`);
  }
  // net.connect skips `lookup` for IP literals, so the guarded lookup never sees them.
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  if (isIP(host) !== 0 && isForbiddenAddress(host, policy)) {
    throw ssrfBlocked(host, new Error(`${host} is a forbidden address`));
  }
  return url;
}

/** The stage's form of a network-policy refusal; the message names the host, not the address. */
function ssrfBlocked(host: string, cause: unknown): PermanentStageError {
  return new PermanentStageError("ssrf_blocked", `refusing to fetch from ${host}: address not allowed`, { cause });
}

/**
 * GETs `rawUrl` and returns its body. Throws PermanentStageError (ssrf_blocked, invalid_source,
 * too_many_redirects, fetch_rejected for 4xx, document_too_large) or TransientStageError
 * (fetch_failed for 5xx/429/connection errors, fetch_timeout), or the signal's reason if aborted.
 */
export async function fetchUrl(
  rawUrl: string,
  limits: { maxBytes: number; timeoutMs: number },
  policy: FetchPolicy,
  signal: AbortSignal,
): Promise<FetchedDocument> {
  const timeout = AbortSignal.timeout(limits.timeoutMs);
  const combined = AbortSignal.any([signal, timeout]);
  const agent = new Agent({
    connect: { lookup: createGuardedLookup(policy, policy.resolve), timeout: limits.timeoutMs },
    headersTimeout: limits.timeoutMs,
    bodyTimeout: limits.timeoutMs,
  });
  const maxRedirects = policy.maxRedirects ?? 5;
  try {
    let url = checkFetchUrl(rawUrl, policy);
    for (let hop = 0; ; hop++) {
      const res = await request(url, {
        method: "GET",
        dispatcher: agent,
        signal: combined,
        headers: { "user-agent": policy.userAgent ?? "jobmesh-ingest/1", accept: "*/*", "accept-encoding": "identity" },
      });
      const location = res.headers["location"];
      if (REDIRECTS.has(res.statusCode) && typeof location === "string") {
        discard(res.body);
        if (hop >= maxRedirects) {
          throw new PermanentStageError("too_many_redirects", `more than ${maxRedirects} redirects`);
        }
        url = checkFetchUrl(location, policy, url);
        continue;
      }
      if (res.statusCode < 200 || res.statusCode > 299) {
        discard(res.body);
        throw statusError(res.statusCode);
      }
      const declared = Number(res.headers["content-length"]);
      if (Number.isFinite(declared) && declared > limits.maxBytes) {
        discard(res.body);
        throw tooLarge(limits.maxBytes);
      }
      const bytes = await readLimited(res.body, limits.maxBytes);
      return {
        bytes,
        finalUrl: url.href,
        filename: filenameOf(header(res.headers["content-disposition"]), url),
        mediaTypeHint: header(res.headers["content-type"])?.split(";")[0]?.trim().toLowerCase() || undefined,
      };
    }
  } catch (err) {
    throw classify(err, signal, timeout);
  } finally {
    agent.destroy().catch(() => {});
  }
}

/** Collects a body, destroying the stream (and so the connection) once it passes the limit. */
async function readLimited(body: Body, maxBytes: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of body) {
    total += chunk.byteLength;
    if (total > maxBytes) {
      discard(body);
      throw tooLarge(maxBytes);
    }
    chunks.push(chunk);
  }
  return new Uint8Array(Buffer.concat(chunks, total));
}

type Body = Dispatcher.ResponseData["body"];

/** Drops a body we will not read; undici reports the abort as a stream error nobody needs. */
function discard(body: Body): void {
  body.on("error", () => {});
  body.destroy();
}

/** The error for a document over the size limit; shared with the non-URL sources. */
export function tooLarge(maxBytes: number): PermanentStageError {
  return new PermanentStageError("document_too_large", `document exceeds the limit of ${maxBytes} bytes`);
}

function statusError(status: number): Error {
  const message = `the document server answered HTTP ${status}`;
  if (status >= 500 || RETRYABLE_STATUS.has(status)) return new TransientStageError("fetch_failed", message);
  return new PermanentStageError("fetch_rejected", message);
}

/** Maps whatever the fetch threw onto a stage error; a caller's abort passes through as is. */
function classify(err: unknown, signal: AbortSignal, timeout: AbortSignal): unknown {
  if (signal.aborted) return signal.reason;
  const stageError = findStageError(err);
  if (stageError) return stageError;
  const blocked = findBlockedAddressError(err);
  if (blocked) return ssrfBlocked(blocked.host, blocked);
  if (timeout.aborted || err instanceof undiciErrors.HeadersTimeoutError
    || err instanceof undiciErrors.BodyTimeoutError || err instanceof undiciErrors.ConnectTimeoutError) {
    return new TransientStageError("fetch_timeout", "fetching the document timed out", { cause: err });
  }
  return new TransientStageError("fetch_failed", "fetching the document failed", { cause: err });
}

function header(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function filenameOf(disposition: string | undefined, url: URL): string | undefined {
  const quoted = disposition?.match(/filename\*?=(?:UTF-8'')?"?([^";]+)"?/i)?.[1];
  const candidate = quoted ?? url.pathname.split("/").filter(Boolean).at(-1);
  if (!candidate) return undefined;
  try {
    return decodeURIComponent(candidate);
  } catch {
    return candidate;
  }
}

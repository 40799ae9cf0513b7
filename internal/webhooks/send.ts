/**
 * One HTTP attempt of a delivery: a signed POST through the guarded undici dispatcher (pooled
 * keep-alive connections per origin, the network policy checked on the address each connection
 * actually uses, redirects never followed), bounded by the timeout, and its answer reduced to
 * what the delivery log keeps: outcome, status, latency, a 1 KiB excerpt of the body, and a
 * Retry-After when one came. Never throws: every failure is an outcome.
 */
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { randomUUID } from "node:crypto";
import { request, type Dispatcher } from "undici";
import { WebhookAttemptOutcome, WebhookDeliveryAttemptSchema, type WebhookDeliveryAttempt } from "../../gen/jobmesh/v1/webhooks_pb.js";
import { checkWebhookUrl, createGuardedDispatcher, isBlockedAddressError, UrlPolicyError, type NetPolicy } from "../netpolicy/index.ts";
import { testPingBody } from "./payload.ts";
import { parseRetryAfter } from "./schedule.ts";
import { signedHeaders } from "./signature.ts";

/** The most of an answer's body kept in the log (the contract's bound on response_excerpt). */
export const excerptBytes = 1024;
/** The most of an answer's body read at all; past it the connection is dropped rather than drained. */
const drainBytes = 64 * 1024;

/** How one attempt went. */
export interface AttemptResult {
  outcome: WebhookAttemptOutcome;
  /** 0 when no answer came. */
  statusCode: number;
  latencyUs: number;
  responseExcerpt: string;
  /** For people; "" on success. */
  errorMessage: string;
  attemptTime: Date;
  /** The answer's Retry-After, in ms from now, when it had a valid one. */
  retryAfterMs?: number;
}

export interface SendRequest {
  url: string;
  /** The webhook-id: the event id (a test ping has its own). */
  id: string;
  body: string;
  /** Secrets that sign, current first. */
  secrets: readonly string[];
}

export interface SendOptions {
  dispatcher: Dispatcher;
  policy: NetPolicy;
  timeoutMs: number;
}

/** Sends one signed attempt and reports how it went. */
export async function sendAttempt(req: SendRequest, options: SendOptions): Promise<AttemptResult> {
  const attemptTime = new Date();
  const started = performance.now();
  const result = (fields: Omit<AttemptResult, "attemptTime" | "latencyUs">): AttemptResult => ({
    ...fields,
    attemptTime,
    latencyUs: Math.max(0, Math.round((performance.now() - started) * 1000)),
  });
  const timeout = AbortSignal.timeout(options.timeoutMs);
  try {
    // Checked again at every attempt: the policy may have tightened since the URL was accepted.
    checkWebhookUrl(req.url, options.policy);
    const response = await request(req.url, {
      method: "POST",
      dispatcher: options.dispatcher,
      headers: { ...signedHeaders(req.secrets, req.id, req.body, attemptTime), "user-agent": "jobmesh-webhooks/1" },
      body: req.body,
      signal: timeout,
      headersTimeout: options.timeoutMs,
      bodyTimeout: options.timeoutMs,
    });
    const excerpt = await readExcerpt(response.body);
    const status = response.statusCode;
    const ok = status >= 200 && status < 300;
    return result({
      outcome: ok ? WebhookAttemptOutcome.SUCCEEDED : WebhookAttemptOutcome.HTTP_ERROR,
      statusCode: status,
      responseExcerpt: excerpt,
      errorMessage: ok ? "" : status >= 300 && status < 400 ? `HTTP ${status}: redirects are not followed` : `HTTP ${status}`,
      retryAfterMs: ok ? undefined : parseRetryAfter(response.headers["retry-after"]),
    });
  } catch (error) {
    return result(failureOf(error, timeout.aborted, options.timeoutMs));
  }
}

/** Reads up to excerptBytes of the body as UTF-8 (invalid bytes replaced), draining a little more so the connection can be reused. */
async function readExcerpt(body: Dispatcher.ResponseData["body"]): Promise<string> {
  const kept: Buffer[] = [];
  let keptBytes = 0;
  let seen = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    if (keptBytes < excerptBytes) {
      const part = chunk.subarray(0, excerptBytes - keptBytes);
      kept.push(part);
      keptBytes += part.length;
    }
    seen += chunk.length;
    // Leaving the loop destroys the body (and its connection): an endless answer costs nothing more.
    if (seen > drainBytes) break;
  }
  return excerptOf(Buffer.concat(kept));
}

/** `bytes` decoded as UTF-8 with replacement, cut on a character so it stays within excerptBytes. */
export function excerptOf(bytes: Uint8Array): string {
  let text = new TextDecoder("utf-8", { fatal: false }).decode(bytes.subarray(0, excerptBytes));
  // A character cut at the end decodes to U+FFFD (3 bytes), which can push the text past the bound.
  while (Buffer.byteLength(text) > excerptBytes) text = [...text].slice(0, -1).join("");
  return text;
}

function failureOf(error: unknown, timedOut: boolean, timeoutMs: number): Omit<AttemptResult, "attemptTime" | "latencyUs"> {
  const none = { statusCode: 0, responseExcerpt: "" };
  if (error instanceof UrlPolicyError || isBlockedAddressError(error)) {
    return { ...none, outcome: WebhookAttemptOutcome.BLOCKED, errorMessage: (error as Error).message };
  }
  const code = (error as { code?: string }).code ?? "";
  if (timedOut || code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT" || code === "UND_ERR_CONNECT_TIMEOUT") {
    return { ...none, outcome: WebhookAttemptOutcome.TIMEOUT, errorMessage: `no complete answer within ${timeoutMs} ms` };
  }
  const message = error instanceof Error ? error.message : String(error);
  return { ...none, outcome: WebhookAttemptOutcome.CONNECTION_ERROR, errorMessage: `connection failed: ${message}`.slice(0, 1024) };
}

/** An AttemptResult as the contract's WebhookDeliveryAttempt. */
export function attemptMessage(result: AttemptResult, attempt: number, replay = false): WebhookDeliveryAttempt {
  return create(WebhookDeliveryAttemptSchema, {
    attempt,
    outcome: result.outcome,
    statusCode: result.statusCode,
    latency: durationFromMs(result.latencyUs / 1000),
    responseExcerpt: result.responseExcerpt,
    errorMessage: result.errorMessage,
    attemptTime: timestampFromDate(result.attemptTime),
    replay,
  });
}

/** What TestWebhook needs of a subscription: its name, URL and its secrets in clear (current first). */
export interface TestPingTarget {
  /** "webhooks/{id}". */
  name: string;
  url: string;
  secrets: readonly string[];
}

/**
 * TestWebhook: a signed ping (type "webhook.test") sent now, once, outside the delivery log.
 * `dispatcher` defaults to a fresh guarded one for this ping (closed after it).
 */
export async function sendTestPing(target: TestPingTarget, options: { policy: NetPolicy; timeoutMs: number; dispatcher?: Dispatcher }): Promise<WebhookDeliveryAttempt> {
  const dispatcher = options.dispatcher ?? createGuardedDispatcher(options.policy, { connectTimeoutMs: options.timeoutMs });
  try {
    const result = await sendAttempt({ url: target.url, id: `ping_${randomUUID()}`, body: testPingBody(target.name), secrets: target.secrets }, { dispatcher, policy: options.policy, timeoutMs: options.timeoutMs });
    return attemptMessage(result, 1);
  } finally {
    if (!options.dispatcher) await dispatcher.close().catch(() => {});
  }
}

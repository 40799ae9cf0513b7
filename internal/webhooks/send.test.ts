// One attempt against a local receiver (127.0.0.1 only): each way an answer can go maps to its
// outcome, and the answer is read only as far as the log keeps it.
import t from "tap";
import { once } from "node:events";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { WebhookAttemptOutcome } from "../../gen/jobmesh/v1/webhooks_pb.js";
import { createGuardedDispatcher } from "../netpolicy/index.ts";
import { excerptOf, sendAttempt, sendTestPing } from "./send.ts";
import { generateWebhookSecret } from "./secrets.ts";

let handler: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => res.end("ok");
let connections = 0;
const server = createServer((req, res) => handler(req, res));
server.on("connection", () => connections++);
server.listen(0, "127.0.0.1");
await once(server, "listening");
const port = (server.address() as AddressInfo).port;
const url = `http://127.0.0.1:${port}/hook`;
const policy = { allowHttp: true, allowHosts: [`127.0.0.1:${port}`] };
const dispatcher = createGuardedDispatcher(policy, {});
t.teardown(async () => {
  await dispatcher.close();
  server.closeAllConnections();
  server.close();
});
const send = (timeoutMs = 5_000, p = policy) => sendAttempt({ url, id: "evt-1", body: '{"type":"x"}', secrets: [generateWebhookSecret()] }, { dispatcher, policy: p, timeoutMs });

void t.test("send - 2xx succeeds, with the excerpt of the answer", async (t) => {
  handler = (_req, res) => res.writeHead(202).end("accepted ✓");
  const r = await send();
  t.same([r.outcome, r.statusCode, r.responseExcerpt, r.errorMessage], [WebhookAttemptOutcome.SUCCEEDED, 202, "accepted ✓", ""]);
  t.ok(r.latencyUs > 0);
});

void t.test("send - a redirect is an answer, not followed; Retry-After is read from failures", async (t) => {
  let followed = 0;
  handler = (req, res) => {
    if (req.url === "/elsewhere") followed++;
    res.writeHead(302, { location: `http://127.0.0.1:${port}/elsewhere`, "retry-after": "7" }).end();
  };
  const r = await send();
  t.same([r.outcome, r.statusCode, r.retryAfterMs], [WebhookAttemptOutcome.HTTP_ERROR, 302, 7_000]);
  t.match(r.errorMessage, /redirects are not followed/);
  t.equal(followed, 0);
});

void t.test("send - a huge answer is cut to 1 KiB", async (t) => {
  handler = (_req, res) => res.writeHead(500).end("x".repeat(1_000_000));
  const r = await send();
  t.equal(r.outcome, WebhookAttemptOutcome.HTTP_ERROR);
  t.equal(r.responseExcerpt, "x".repeat(1024));
});

void t.test("send - no answer within the timeout is TIMEOUT", async (t) => {
  handler = () => {};
  const r = await send(300);
  t.equal(r.outcome, WebhookAttemptOutcome.TIMEOUT);
  t.equal(r.statusCode, 0);
});

void t.test("send - a receiver the policy does not allow is BLOCKED, and no connection is made", async (t) => {
  handler = (_req, res) => res.end("ok");
  const before = connections;
  const strict = { allowHttp: true };
  const blockedDispatcher = createGuardedDispatcher(strict, {});
  const r = await sendAttempt({ url, id: "e", body: "{}", secrets: [] }, { dispatcher: blockedDispatcher, policy: strict, timeoutMs: 2_000 });
  await blockedDispatcher.close();
  t.equal(r.outcome, WebhookAttemptOutcome.BLOCKED);
  t.equal(connections, before, "no socket reached the receiver");
  const https = await sendAttempt({ url, id: "e", body: "{}", secrets: [] }, { dispatcher, policy: { allowHosts: policy.allowHosts }, timeoutMs: 2_000 });
  t.equal(https.outcome, WebhookAttemptOutcome.BLOCKED, "http refused unless allowHttp");
});

void t.test("send - a closed port is CONNECTION_ERROR", async (t) => {
  const closed = createServer();
  closed.listen(0, "127.0.0.1");
  await once(closed, "listening");
  const closedPort = (closed.address() as AddressInfo).port;
  closed.close();
  await once(closed, "close");
  const p = { allowHttp: true, allowHosts: [`127.0.0.1:${closedPort}`] };
  const d = createGuardedDispatcher(p, {});
  const r = await sendAttempt({ url: `http://127.0.0.1:${closedPort}/`, id: "e", body: "{}", secrets: [] }, { dispatcher: d, policy: p, timeoutMs: 2_000 });
  await d.close();
  t.equal(r.outcome, WebhookAttemptOutcome.CONNECTION_ERROR);
});

void t.test("test ping - signed, type webhook.test, reported as an attempt", async (t) => {
  let body = "";
  let signature = "";
  handler = (req, res) => {
    signature = String(req.headers["webhook-signature"]);
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => res.end("pong"));
  };
  const attempt = await sendTestPing({ name: "webhooks/w1", url, secrets: [generateWebhookSecret()] }, { policy, timeoutMs: 5_000 });
  t.same([attempt.outcome, attempt.statusCode, attempt.responseExcerpt, attempt.attempt], [WebhookAttemptOutcome.SUCCEEDED, 200, "pong", 1]);
  t.equal(JSON.parse(body).type, "webhook.test");
  t.match(signature, /^v1,/);
});

void t.test("excerpt - at most 1 KiB of UTF-8, invalid bytes replaced, never half a character", async (t) => {
  t.equal(excerptOf(Buffer.from("ok")), "ok");
  t.equal(excerptOf(Buffer.from([0x61, 0xff, 0x62])), "a\uFFFDb");
  const long = excerptOf(Buffer.from("€".repeat(2000)));
  t.ok(Buffer.byteLength(long) <= 1024);
  t.notMatch(long, /\uFFFD/, "a character cut at the bound is dropped, not replaced");
});

/**
 * WebhookService through the real server (Postgres, NATS, identity enforced): subscriptions are
 * admin-only and tenant-scoped, the secret is shown once and kept sealed, updates and deletes
 * honour the etag, URLs that are not public https are refused unless the local development mesh
 * (`npm start`) allows http and loopback, and the delivery log is read, replayed and recovered.
 * The delivery engine is off: no packet leaves this machine (subscribed URLs are public IP
 * literals, never resolved, never contacted), and the connect fuse makes that a fact: a connect
 * to a non-loopback address fails before the kernel sees it and fails the last test.
 */
import t from "tap";
import { create, toJsonString } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { randomUUID } from "node:crypto";
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { Webhook as StandardWebhook } from "standardwebhooks";
import { WebhookAttemptOutcome } from "../gen/jobmesh/v1/webhooks_pb.js";
import { JobEventType } from "../gen/jobmesh/v1/events_pb.js";
import { WebhookDeliveryStatus, WebhookDisabledReason, WebhookSchema, WebhookService, WebhookState } from "../gen/jobmesh/v1/webhooks_pb.js";
import { loadConfig } from "../internal/config/index.ts";
import { serveWebhooks } from "../internal/mesh/servers.ts";
import { localMeshWebhooks, webhookPolicyLine } from "../internal/mesh/up.ts";
import { loadKeyEncryptionKey } from "../internal/sealing/index.ts";
import { createWebhookDomain, signingSecretsOf, unsealWebhookSecret, type WebhookRow } from "../internal/webhooks/index.ts";
import { attempts, violations } from "./support/connect-fuse.ts";
import { startTestMesh } from "./support/mesh.ts";

t.setTimeout(300_000);

const mesh = await startTestMesh({}, { auth: true, webhooks: true, webhookDelivery: false });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const client = createClient(WebhookService, createConnectTransport({ baseUrl: mesh.webhooks!.url, httpVersion: "1.1" }));
const admin = await auth.headersFor("admin");
const tenantB = "webhooks-tenant-b";
const adminB = await auth.headersFor("admin", tenantB);
const db = mesh.infra.db;
const kek = await loadKeyEncryptionKey(mesh.isolated.config.auth.keyEncryptionKey, mesh.isolated.config.auth.signingKeyDir);
// Public addresses written as literals: the subscribe-time check resolves nothing, and with the
// delivery engine off nothing is ever sent to them.
const publicUrl = (path: string) => `https://93.184.215.14/${path}`;

async function codeOf(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

async function refusal(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call was not refused");
}

const rowOf = async (name: string) => (await db.query<WebhookRow>("SELECT * FROM webhooks WHERE id = $1", [name.slice("webhooks/".length)])).rows[0]!;

t.test("create - the secret is whsec_ + 32 random bytes, shown once, and stored only sealed", async (t) => {
  const { webhook, secret } = await client.createWebhook({ webhook: { url: publicUrl("a"), eventTypes: [JobEventType.JOB_SUCCEEDED], description: "first" } }, { headers: admin });
  t.match(webhook!.name, /^webhooks\/[0-9a-f-]{36}$/);
  t.equal(webhook!.state, WebhookState.ACTIVE);
  t.match(secret, /^whsec_[A-Za-z0-9+/]{43}=$/);
  t.equal(Buffer.from(secret.slice("whsec_".length), "base64").length, 32);
  t.not(webhook!.etag, "");

  const got = await client.getWebhook({ name: webhook!.name }, { headers: admin });
  t.equal(got.webhook!.url, publicUrl("a"));
  t.notMatch(toJsonString(WebhookSchema, got.webhook!), secret.slice(6), "Get does not show the secret");
  const listed = await client.listWebhooks({}, { headers: admin });
  t.notMatch(listed.webhooks.map((w) => toJsonString(WebhookSchema, w)).join(), secret.slice(6), "List does not show the secret");

  // No column holds the secret in clear: not as text, not as its bytes, not as its base64.
  const row = await rowOf(webhook!.name);
  const { rows } = await db.query<{ text: string }>("SELECT row_to_json(w)::text AS text FROM webhooks w WHERE id = $1", [row.id]);
  t.notOk(rows[0].text.includes(secret.slice(6)), "the row's JSON does not contain the secret");
  const raw = Buffer.from(secret.slice(6), "base64");
  for (const column of [row.secret_sealed, row.previous_secret_sealed ?? Buffer.alloc(0)]) {
    t.equal(column.indexOf(raw), -1, "the sealed column does not contain the secret's bytes");
    t.equal(column.indexOf(Buffer.from(secret)), -1, "the sealed column does not contain the secret's text");
  }
  // Sealed, not hashed: the service can sign with it; bound to this row.
  t.equal(unsealWebhookSecret(kek, row.id, row.secret_sealed), secret);
  t.throws(() => unsealWebhookSecret(kek, randomUUID(), row.secret_sealed), "a sealed secret does not unseal for another row");
});

t.test("create - idempotent on request_id: the repeat returns the same subscription without its secret", async (t) => {
  const requestId = randomUUID();
  const first = await client.createWebhook({ webhook: { url: publicUrl("idem") }, requestId }, { headers: admin });
  const again = await client.createWebhook({ webhook: { url: publicUrl("idem") }, requestId }, { headers: admin });
  t.equal(again.webhook!.name, first.webhook!.name);
  t.not(first.secret, "");
  t.equal(again.secret, "", "the secret is shown once");
  const { rows } = await db.query("SELECT 1 FROM webhooks WHERE request_id = $1", [requestId]);
  t.equal(rows.length, 1);
  // The same request_id in another tenant is another request.
  const other = await client.createWebhook({ webhook: { url: publicUrl("idem") }, requestId }, { headers: adminB });
  t.not(other.webhook!.name, first.webhook!.name);
  t.not(other.secret, "");
});

t.test("update - a stale etag is ABORTED; the mask changes only its fields; DISABLED pauses (MANUAL), ACTIVE resumes", async (t) => {
  const { webhook } = await client.createWebhook({ webhook: { url: publicUrl("upd"), description: "before", labels: { team: "a" } } }, { headers: admin });
  const name = webhook!.name;
  const updated = await client.updateWebhook(
    { webhook: { name, etag: webhook!.etag, description: "after", labels: { team: "ignored" } }, updateMask: { paths: ["description"] } },
    { headers: admin },
  );
  t.equal(updated.webhook!.description, "after");
  t.same(updated.webhook!.labels, { team: "a" }, "a field outside the mask is kept");
  t.not(updated.webhook!.etag, webhook!.etag, "the etag changes with every write");

  const stale = await refusal(client.updateWebhook({ webhook: { name, etag: webhook!.etag, description: "lost" }, updateMask: { paths: ["description"] } }, { headers: admin }));
  t.equal(stale.code, Code.Aborted);
  t.equal((await client.getWebhook({ name }, { headers: admin })).webhook!.description, "after", "the stale update changed nothing");

  const paused = await client.updateWebhook({ webhook: { name, state: WebhookState.DISABLED }, updateMask: { paths: ["state"] } }, { headers: admin });
  t.equal(paused.webhook!.state, WebhookState.DISABLED);
  t.equal(paused.webhook!.disabledReason, WebhookDisabledReason.MANUAL);
  t.ok(paused.webhook!.disableTime);

  // A subscription the engine disabled (410 Gone) and that was failing comes back healthy.
  await db.query("UPDATE webhooks SET disabled_reason = 2, failing_since = now() WHERE id = $1", [name.slice(9)]);
  const resumed = await client.updateWebhook({ webhook: { name, state: WebhookState.ACTIVE }, updateMask: { paths: ["state"] } }, { headers: admin });
  t.equal(resumed.webhook!.state, WebhookState.ACTIVE);
  t.equal(resumed.webhook!.disabledReason, WebhookDisabledReason.UNSPECIFIED);
  t.notOk(resumed.webhook!.disableTime);
  t.equal((await rowOf(name)).failing_since, null, "re-enabling forgets past failures");

  const filtered = await client.updateWebhook(
    { webhook: { name, jobFilter: { pipeline: "pipelines/invoices", jobLabels: { env: "prod" } }, maxConcurrency: 3, maxRatePerSecond: 7 }, updateMask: { paths: ["job_filter", "max_concurrency", "max_rate_per_second"] } },
    { headers: admin },
  );
  t.same(filtered.webhook!.jobFilter?.jobLabels, { env: "prod" });
  t.equal(filtered.webhook!.jobFilter?.pipeline, "pipelines/invoices");
  t.equal(filtered.webhook!.maxConcurrency, 3);
  t.equal(filtered.webhook!.maxRatePerSecond, 7);

  t.equal(await codeOf(client.updateWebhook({ webhook: { name }, updateMask: { paths: ["secret_rotate_time"] } }, { headers: admin })), Code.InvalidArgument);
  t.equal(await codeOf(client.updateWebhook({ webhook: { name, url: "http://93.184.215.14/x" }, updateMask: { paths: ["url"] } }, { headers: admin })), Code.InvalidArgument, "a new URL is checked too");
});

t.test("delete - a stale etag is ABORTED; without one the subscription goes, with its deliveries", async (t) => {
  const { webhook } = await client.createWebhook({ webhook: { url: publicUrl("del") } }, { headers: admin });
  const name = webhook!.name;
  await client.updateWebhook({ webhook: { name, description: "changed" }, updateMask: { paths: ["description"] } }, { headers: admin });
  t.equal(await codeOf(client.deleteWebhook({ name, etag: webhook!.etag }, { headers: admin })), Code.Aborted);
  await insertDelivery(webhook!.name, "evt-del", 1);
  await client.deleteWebhook({ name }, { headers: admin });
  t.equal(await codeOf(client.getWebhook({ name }, { headers: admin })), Code.NotFound);
  t.equal(await codeOf(client.deleteWebhook({ name }, { headers: admin })), Code.NotFound);
  const { rows } = await db.query("SELECT 1 FROM webhook_deliveries WHERE webhook_id = $1", [name.slice(9)]);
  t.equal(rows.length, 0, "the delivery log went with it");
});

t.test("rotate - a new secret, shown once; the old one keeps signing during the overlap (default 24 h), not after; 0 ends it now", async (t) => {
  const { webhook, secret: first } = await client.createWebhook({ webhook: { url: publicUrl("rot") } }, { headers: admin });
  const name = webhook!.name;
  const before = Date.now();
  const rotated = await client.rotateWebhookSecret({ name }, { headers: admin });
  t.match(rotated.secret, /^whsec_/);
  t.not(rotated.secret, first);
  const expire = Number(rotated.previousSecretExpireTime!.seconds) * 1000;
  t.ok(expire >= before + 24 * 3_600_000 - 60_000 && expire <= Date.now() + 24 * 3_600_000 + 60_000, "the overlap defaults to 24 h");
  const row = await rowOf(name);
  t.same(signingSecretsOf(kek, row), [rotated.secret, first], "both secrets sign during the overlap, the new one first");
  t.same(signingSecretsOf(kek, row, new Date(expire + 1000)), [rotated.secret], "the old secret stops signing when the overlap ends");
  t.notMatch(toJsonString(WebhookSchema, (await client.getWebhook({ name }, { headers: admin })).webhook!), rotated.secret.slice(6));

  const now = await client.rotateWebhookSecret({ name, overlap: { seconds: 0n } }, { headers: admin });
  t.same(signingSecretsOf(kek, await rowOf(name)), [now.secret], "overlap 0 ends the previous secret at once");
  t.equal(await codeOf(client.rotateWebhookSecret({ name, overlap: { seconds: 8n * 86_400n } }, { headers: admin })), Code.InvalidArgument, "at most 7 days");
});

t.test("URLs - not https, userinfo, loopback, private and metadata addresses are INVALID_ARGUMENT naming webhook.url and why", async (t) => {
  const cases: [string, RegExp][] = [
    ["http://93.184.215.14/hook", /scheme http: is not allowed/],
    ["https://user:pass@93.184.215.14/hook", /user name or password/],
    ["https://127.0.0.1:8443/hook", /not a public address/],
    ["https://[::1]/hook", /not a public address/],
    ["https://10.1.2.3/hook", /not a public address/],
    ["https://192.168.1.1/hook", /not a public address/],
    ["https://169.254.169.254/latest/meta-data", /not a public address/],
    ["https://[fc00::1]/hook", /not a public address/],
  ];
  for (const [url, why] of cases) {
    const error = await refusal(client.createWebhook({ webhook: { url } }, { headers: admin }));
    t.equal(error.code, Code.InvalidArgument, url);
    t.match(error.rawMessage, /^webhook\.url is refused: /, `${url}: names the field`);
    t.match(error.rawMessage, why, `${url}: says why`);
  }
  // protovalidate already refuses this spelling as a URI; refused either way.
  t.equal(await codeOf(client.createWebhook({ webhook: { url: "https://[::ffff:127.0.0.1]/hook" } }, { headers: admin })), Code.InvalidArgument);
  const { rows } = await db.query("SELECT url FROM webhooks WHERE url LIKE '%127.0.0.1%' OR url LIKE 'http:%' OR url LIKE '%@%' OR url LIKE '%[%'");
  t.same(rows, [], "nothing refused was stored");
});

t.test("npm start - the local mesh's settings allow http and loopback receivers when it listens on loopback; an explicit false, a reachable JOBMESH_HOST and every other configuration refuse them", async (t) => {
  const env = mesh.isolated.env;
  const local = localMeshWebhooks(loadConfig(env).webhooks, "127.0.0.1");
  t.ok(local.allowHttp && local.allowLoopback);
  for (const host of ["0.0.0.0", "::", "192.168.1.20", "jobmesh.example.com"]) {
    const reachable = localMeshWebhooks(loadConfig(env).webhooks, host);
    t.notOk(reachable.allowHttp || reachable.allowLoopback, `JOBMESH_HOST=${host}: both stay off`);
    t.match(webhookPolicyLine(reachable, host), /stay off because JOBMESH_HOST/, `JOBMESH_HOST=${host}: jobmesh up says so`);
  }
  t.ok(localMeshWebhooks(loadConfig(env).webhooks, "::1").allowLoopback, "::1 is loopback");
  const strict = loadConfig(env).webhooks;
  t.notOk(strict.allowHttp || strict.allowLoopback, "by default, outside jobmesh up, both are refused");
  const explicit = localMeshWebhooks(loadConfig({ ...env, JOBMESH_WEBHOOKS_ALLOW_HTTP: "false" }).webhooks, "127.0.0.1");
  t.notOk(explicit.allowHttp, "jobmesh up keeps an explicit false");
  t.ok(explicit.allowLoopback);

  const tenantId = (await auth.userFor("admin")).tenantId;
  const domain = createWebhookDomain({ db, pageTokens: mesh.infra.pageTokens, keyEncryptionKey: kek, policy: local });
  const created = await domain.create(tenantId, create(WebhookSchema, { url: "http://127.0.0.1:9999/hooks" }), "");
  t.equal(created.webhook.url, "http://127.0.0.1:9999/hooks");
  await t.rejects(domain.create(tenantId, create(WebhookSchema, { url: "http://10.0.0.1/hooks" }), ""), /not a public address/, "private ranges stay refused");
  await t.rejects(domain.create(tenantId, create(WebhookSchema, { url: "http://169.254.169.254/" }), ""), /not a public address/, "metadata stays refused");
  const strictDomain = createWebhookDomain({ db, pageTokens: mesh.infra.pageTokens, keyEncryptionKey: kek, policy: explicit });
  await t.rejects(strictDomain.create(tenantId, create(WebhookSchema, { url: "http://127.0.0.1:9999/hooks" }), ""), /scheme http: is not allowed/);
});

t.test("npm start - WebhookService served with the local mesh's settings subscribes a loopback http receiver, and TestWebhook reaches it signed", async (t) => {
  const received: { headers: IncomingHttpHeaders; body: string }[] = [];
  const receiver = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      received.push({ headers: req.headers, body: Buffer.concat(chunks).toString() });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  t.teardown(() => new Promise<void>((resolve) => receiver.close(() => resolve())));
  const port = (receiver.address() as AddressInfo).port;

  // The process `jobmesh up` runs, on the same database; only this receiver's port is opened.
  const webhooks = { ...localMeshWebhooks(mesh.infra.config.webhooks, "127.0.0.1"), allowHosts: [`127.0.0.1:${port}`] };
  t.match(webhookPolicyLine(webhooks), /http:\/\/ URLs and loopback addresses/, "jobmesh up says what it allows");
  t.match(webhookPolicyLine(mesh.infra.config.webhooks), /public https/);
  const local = await serveWebhooks({ ...mesh.infra, config: { ...mesh.infra.config, webhooks } }, 0, { delivery: false });
  t.teardown(() => local.close());
  const localClient = createClient(WebhookService, createConnectTransport({ baseUrl: local.url, httpVersion: "1.1" }));

  const { webhook, secret } = await localClient.createWebhook({ webhook: { url: `http://127.0.0.1:${port}/hooks` } }, { headers: admin });
  t.equal(webhook!.url, `http://127.0.0.1:${port}/hooks`);
  t.equal(await codeOf(localClient.createWebhook({ webhook: { url: `http://127.0.0.1:${port + 1}/hooks` } }, { headers: admin })), Code.InvalidArgument, "another local port stays refused");
  t.equal(await codeOf(localClient.createWebhook({ webhook: { url: "http://10.0.0.1/hooks" } }, { headers: admin })), Code.InvalidArgument, "private ranges stay refused");

  // Paused, it still answers TestWebhook (the ping is outside the delivery log).
  await localClient.updateWebhook({ webhook: { name: webhook!.name, state: WebhookState.DISABLED }, updateMask: { paths: ["state"] } }, { headers: admin });
  const { attempt } = await localClient.testWebhook({ name: webhook!.name }, { headers: admin });
  t.equal(attempt!.outcome, WebhookAttemptOutcome.SUCCEEDED);
  t.equal(attempt!.statusCode, 204);
  t.equal(received.length, 1);
  const ping = received[0];
  const verified = new StandardWebhook(secret).verify(ping.body, ping.headers as Record<string, string>) as { type: string };
  t.equal(verified.type, "webhook.test", "the ping verifies with the Standard Webhooks library and the secret shown once");
  const { rows } = await db.query("SELECT 1 FROM webhook_deliveries WHERE webhook_id = $1", [webhook!.name.slice(9)]);
  t.equal(rows.length, 0, "not recorded in the delivery log");
});

t.test("roles - viewer and operator are PERMISSION_DENIED on every WebhookService RPC; no credentials is UNAUTHENTICATED", async (t) => {
  const ghost = "webhooks/00000000-0000-4000-8000-000000000000";
  const delivery = `${ghost}/deliveries/00000000-0000-4000-8000-000000000000`;
  for (const role of ["viewer", "operator"] as const) {
    const headers = await auth.headersFor(role);
    const calls: [string, () => Promise<unknown>][] = [
      ["create", () => client.createWebhook({ webhook: { url: publicUrl("role") } }, { headers })],
      ["get", () => client.getWebhook({ name: ghost }, { headers })],
      ["list", () => client.listWebhooks({}, { headers })],
      ["update", () => client.updateWebhook({ webhook: { name: ghost } }, { headers })],
      ["delete", () => client.deleteWebhook({ name: ghost }, { headers })],
      ["rotate", () => client.rotateWebhookSecret({ name: ghost }, { headers })],
      ["listDeliveries", () => client.listWebhookDeliveries({ parent: ghost }, { headers })],
      ["getDelivery", () => client.getWebhookDelivery({ name: delivery }, { headers })],
      ["replay", () => client.replayWebhookDelivery({ name: delivery }, { headers })],
      ["recover", () => client.recoverWebhookDeliveries({ name: ghost, since: timestampFromDate(new Date()) }, { headers })],
      ["test", () => client.testWebhook({ name: ghost }, { headers })],
    ];
    for (const [what, call] of calls) t.equal(await codeOf(call()), Code.PermissionDenied, `${role} ${what}`);
  }
  t.equal(await codeOf(client.listWebhooks({})), Code.Unauthenticated);
  t.equal(await codeOf(client.getWebhook({ name: ghost }, { headers: admin })), Code.NotFound, "an admin is let in");
});

t.test("tenants - another tenant's subscriptions and deliveries are not found, not listed, not changed", async (t) => {
  const { webhook } = await client.createWebhook({ webhook: { url: publicUrl("mine"), labels: { tenant: "a" } } }, { headers: admin });
  const name = webhook!.name;
  const deliveryName = await insertDelivery(name, "evt-tenant", 3);
  const calls: [string, () => Promise<unknown>][] = [
    ["get", () => client.getWebhook({ name }, { headers: adminB })],
    ["update", () => client.updateWebhook({ webhook: { name, description: "x" }, updateMask: { paths: ["description"] } }, { headers: adminB })],
    ["delete", () => client.deleteWebhook({ name }, { headers: adminB })],
    ["rotate", () => client.rotateWebhookSecret({ name }, { headers: adminB })],
    ["listDeliveries", () => client.listWebhookDeliveries({ parent: name }, { headers: adminB })],
    ["getDelivery", () => client.getWebhookDelivery({ name: deliveryName }, { headers: adminB })],
    ["replay", () => client.replayWebhookDelivery({ name: deliveryName }, { headers: adminB })],
    ["recover", () => client.recoverWebhookDeliveries({ name, since: timestampFromDate(new Date(0)) }, { headers: adminB })],
    ["test", () => client.testWebhook({ name }, { headers: adminB })],
  ];
  for (const [what, call] of calls) t.equal(await codeOf(call()), Code.NotFound, `tenant B ${what}`);
  const listedB = await client.listWebhooks({ pageSize: 1000 }, { headers: adminB });
  t.notOk(listedB.webhooks.some((w) => w.name === name), "not in tenant B's list");
  const after = await client.getWebhook({ name }, { headers: admin });
  t.equal(after.webhook!.etag, webhook!.etag, "unchanged");
  t.equal((await client.getWebhookDelivery({ name: deliveryName }, { headers: admin })).delivery!.status, WebhookDeliveryStatus.FAILED, "tenant B's replay changed nothing");
});

t.test("list - filters on state, event types and labels; pages with tokens bound to the query", async (t) => {
  const label = `l${randomUUID().slice(0, 8)}`;
  const names: string[] = [];
  for (let i = 0; i < 5; i++) {
    const { webhook } = await client.createWebhook(
      { webhook: { url: publicUrl(`list-${i}`), labels: { batch: label }, eventTypes: i < 2 ? [JobEventType.JOB_FAILED] : i < 4 ? [JobEventType.JOB_SUCCEEDED] : [], state: i === 0 ? WebhookState.DISABLED : WebhookState.UNSPECIFIED } },
      { headers: admin },
    );
    names.push(webhook!.name);
  }
  const filter = `labels.batch = "${label}"`;
  const seen: string[] = [];
  let pageToken = "";
  do {
    const page = await client.listWebhooks({ filter, pageSize: 2, pageToken, orderBy: "create_time" }, { headers: admin });
    t.ok(page.webhooks.length <= 2);
    seen.push(...page.webhooks.map((w) => w.name));
    pageToken = page.nextPageToken;
  } while (pageToken);
  t.same(seen, names, "every subscription once, oldest first");

  const failed = await client.listWebhooks({ filter: `${filter} AND event_types:JOB_FAILED` }, { headers: admin });
  t.same(failed.webhooks.map((w) => w.name).sort(), [names[0], names[1], names[4]].sort(), "JOB_FAILED subscribers, and those of every type");
  const disabled = await client.listWebhooks({ filter: `${filter} AND state = DISABLED` }, { headers: admin });
  t.same(disabled.webhooks.map((w) => w.name), [names[0]]);
  t.equal(disabled.webhooks[0].disabledReason, WebhookDisabledReason.MANUAL, "created DISABLED is a manual pause");

  const first = await client.listWebhooks({ filter, pageSize: 2 }, { headers: admin });
  t.equal(await codeOf(client.listWebhooks({ filter: `${filter} AND state = ACTIVE`, pageSize: 2, pageToken: first.nextPageToken }, { headers: admin })), Code.InvalidArgument, "a token of another query");
  t.equal(await codeOf(client.listWebhooks({ filter: "secret = x" }, { headers: admin })), Code.InvalidArgument);
  t.equal(await codeOf(client.listWebhooks({ filter: "state = SOMETIMES" }, { headers: admin })), Code.InvalidArgument);
});

t.test("deliveries - listed newest first with every attempt and filters; replay and recover queue them again as replays", async (t) => {
  const { webhook } = await client.createWebhook({ webhook: { url: publicUrl("log") } }, { headers: admin });
  const parent = webhook!.name;
  const succeeded = await insertDelivery(parent, "evt-1", 2, [{ outcome: 2, status: 500 }, { outcome: 1, status: 200 }]);
  const failed = await insertDelivery(parent, "evt-2", 3, [{ outcome: 3, status: 0 }]);
  const pending = await insertDelivery(parent, "evt-3", 1);

  const all = await client.listWebhookDeliveries({ parent }, { headers: admin });
  t.same(all.deliveries.map((d) => d.name), [pending, failed, succeeded]);
  const one = all.deliveries.find((d) => d.name === succeeded)!;
  t.equal(one.eventId, "evt-1");
  t.equal(one.job, "jobs/j-evt-1");
  t.equal(one.eventType, JobEventType.JOB_SUCCEEDED);
  t.same(one.attempts.map((a) => [a.attempt, a.statusCode]), [[1, 500], [2, 200]], "every attempt, oldest first");
  t.equal(one.attempts[0].latency?.nanos, 250_000_000);
  t.equal(one.attempts[0].responseExcerpt, "excerpt 1");
  t.notOk(one.nextAttemptTime, "no next attempt once finished");

  const onlyFailed = await client.listWebhookDeliveries({ parent, filter: "status = FAILED" }, { headers: admin });
  t.same(onlyFailed.deliveries.map((d) => d.name), [failed]);
  const byEvent = await client.listWebhookDeliveries({ parent, filter: 'event_id = "evt-3" AND event_type = JOB_SUCCEEDED' }, { headers: admin });
  t.same(byEvent.deliveries.map((d) => d.name), [pending]);
  const future = await client.listWebhookDeliveries({ parent, filter: `create_time > "${new Date(Date.now() + 3_600_000).toISOString()}"` }, { headers: admin });
  t.same(future.deliveries, []);
  const paged = await client.listWebhookDeliveries({ parent, pageSize: 2 }, { headers: admin });
  const rest = await client.listWebhookDeliveries({ parent, pageSize: 2, pageToken: paged.nextPageToken }, { headers: admin });
  t.same([...paged.deliveries, ...rest.deliveries].map((d) => d.name), [pending, failed, succeeded]);

  const replayed = await client.replayWebhookDelivery({ name: succeeded }, { headers: admin });
  t.equal(replayed.delivery!.status, WebhookDeliveryStatus.PENDING, "a finished delivery is PENDING again");
  t.ok(replayed.delivery!.nextAttemptTime, "due now");
  t.equal(replayed.delivery!.attempts.length, 2, "the past attempts stay");
  const replayRow = await db.query<{ replay_pending: boolean }>("SELECT replay_pending FROM webhook_deliveries WHERE id = $1", [succeeded.split("/").pop()]);
  t.equal(replayRow.rows[0].replay_pending, true, "the next attempt is marked a replay");

  const recovered = await client.recoverWebhookDeliveries({ name: parent, since: timestampFromDate(new Date(Date.now() - 3_600_000)) }, { headers: admin });
  t.equal(recovered.queuedCount, 1, "the one FAILED delivery");
  t.equal((await client.getWebhookDelivery({ name: failed }, { headers: admin })).delivery!.status, WebhookDeliveryStatus.PENDING);
  const none = await client.recoverWebhookDeliveries({ name: parent, since: timestampFromDate(new Date(Date.now() + 3_600_000)) }, { headers: admin });
  t.equal(none.queuedCount, 0, "nothing created after `since`");

  t.equal(await codeOf(client.getWebhookDelivery({ name: `${parent}/deliveries/${randomUUID()}` }, { headers: admin })), Code.NotFound);
  t.equal(await codeOf(client.getWebhookDelivery({ name: `webhooks/${randomUUID()}/deliveries/${succeeded.split("/").pop()}` }, { headers: admin })), Code.NotFound, "a delivery under another subscription's name");
});

let deliveriesMade = 0;

/** A delivery row as the fan-out writes it, with the attempts the dispatcher would have recorded. */
async function insertDelivery(webhookName: string, eventId: string, status: number, attempts: { outcome: number; status: number }[] = []): Promise<string> {
  const webhookId = webhookName.slice("webhooks/".length);
  const { rows } = await db.query<{ id: string }>(
    `INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_id, event_type, job, event, status, attempt_count, next_attempt_time, create_time)
     SELECT tenant_id, id, $2, $3, $4, '\\x'::bytea, $5::smallint, $6, CASE WHEN $5::smallint = 1 THEN now() END,
            date_trunc('milliseconds', now()) + make_interval(secs => $7::int / 1000.0)
     FROM webhooks WHERE id = $1 RETURNING id`,
    // Create times a millisecond apart: newest first is then the reverse of the insert order.
    [webhookId, eventId, JobEventType.JOB_SUCCEEDED, `jobs/j-${eventId}`, status, attempts.length, ++deliveriesMade],
  );
  for (const [i, a] of attempts.entries()) {
    await db.query(
      `INSERT INTO webhook_delivery_attempts (delivery_id, attempt, outcome, status_code, latency_us, response_excerpt, error_message)
       VALUES ($1, $2, $3, $4, 250000, $5, '')`,
      [rows[0].id, i + 1, a.outcome, a.status, `excerpt ${i + 1}`],
    );
  }
  return `${webhookName}/deliveries/${rows[0].id}`;
}

// Last, so it sees every connect the file made.
t.test("fuse - no connect to a non-loopback address was attempted", async (t) => {
  t.ok(attempts.length > 0, "the fuse saw the suite's connects (to Postgres, NATS, the servers)");
  t.same(violations, []);
});

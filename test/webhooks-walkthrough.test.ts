/**
 * Issue 13's "done when", through the real Deno gateway's REST and a reflection-driven CLI
 * (`buf curl`, the same kind of client as grpcurl): an admin logs in, subscribes a local receiver
 * to job_succeeded (the secret shown once), runs a job, and the receiver, verifying every request
 * with the `standardwebhooks` library, gets job_succeeded with the job and its result link. The
 * admin then sees the delivery and its attempt, replays it (the receiver gets the same webhook-id
 * again, the log shows the second attempt marked replay), and does the same with `buf curl`
 * against WebhookService directly. The receiver is on 127.0.0.1, allowed by its exact host:port.
 */
import t from "tap";
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { Webhook } from "standardwebhooks";
import { fetchAnswer, startGatewayMesh, type GatewayAnswer } from "./support/gateway.ts";
import { waitFor } from "./support/wait.ts";

// A Deno gateway, a mesh with a stage worker and the delivery engine, and buf processes on a loaded machine: a hang guard.
t.setTimeout(300_000);
const buf = join(import.meta.dirname, "../node_modules/.bin/buf");
const waiting = { timeoutMs: 60_000, intervalMs: 100 };

interface Arrival {
  id: string;
  verified: boolean;
  body: { type?: string; data?: { job?: string; type?: string; resultUrl?: string } };
}

// The receiver a new user runs: every request is checked with the standard library and the secret shown once.
let secret = "";
const arrivals: Arrival[] = [];
const receiver = createServer((req: IncomingMessage, res: ServerResponse) => {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const raw = Buffer.concat(chunks).toString("utf8");
    const headers = Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, String(v)]));
    let verified = false;
    let body: Arrival["body"] = {};
    try {
      body = new Webhook(secret).verify(raw, headers) as Arrival["body"];
      verified = true;
    } catch {
      // Recorded unverified: the assertions say it must not happen.
    }
    arrivals.push({ id: headers["webhook-id"] ?? "", verified, body });
    res.writeHead(verified ? 204 : 400).end();
  });
});
receiver.listen(0, "127.0.0.1");
await once(receiver, "listening");
t.teardown(() => new Promise<void>((resolve) => receiver.close(() => resolve())));
const hostPort = `127.0.0.1:${(receiver.address() as AddressInfo).port}`;

// Only this receiver's exact host:port is allowed, over http.
const { mesh, url: base } = await startGatewayMesh(t, {
  jobs: true,
  webhooks: true,
  meshEnv: { JOBMESH_WEBHOOKS_ALLOW_HTTP: "true", JOBMESH_WEBHOOKS_ALLOW_HOSTS: hostPort },
});
const admin = await mesh.auth!.userFor("admin");
let token = "";

/** A REST call through the gateway, as the user's fetch makes it. */
function rest(path: string, options: { method?: string; body?: unknown } = {}): Promise<GatewayAnswer> {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["content-type"] = "application/json";
  return fetchAnswer(`${base}${path}`, {
    method: options.method ?? (options.body === undefined ? "GET" : "POST"),
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
}

/** `buf curl` over native gRPC with reflection against WebhookService itself: the (single) response message. */
async function grpcurl(method: string, body: unknown): Promise<Record<string, unknown>> {
  const { stdout } = await promisify(execFile)(
    buf,
    ["curl", "--http2-prior-knowledge", "--protocol", "grpc", "-H", `authorization: Bearer ${token}`, "-d", JSON.stringify(body), `${mesh.webhooks!.url}/jobmesh.v1.WebhookService/${method}`],
    { encoding: "utf8", timeout: 60_000 },
  );
  return JSON.parse(stdout) as Record<string, unknown>;
}

interface AttemptJson {
  attempt: number;
  outcome?: string;
  statusCode?: number;
  replay?: boolean;
}
interface DeliveryJson {
  name: string;
  eventId: string;
  eventType?: string;
  job?: string;
  status?: string;
  attemptCount?: number;
  attempts?: AttemptJson[];
}

const verifiedWith = (id: string) => arrivals.filter((a) => a.id === id && a.verified).length;
let webhookName = "";
let jobName = "";
let eventId = "";
let delivery: DeliveryJson | undefined;
const documentText = "A short note for the webhook walkthrough.";

t.test("REST - log in, subscribe the receiver to job_succeeded, run a job: the receiver verifies job_succeeded with the result link", async (t) => {
  const login = await rest("/v1/auth:login", { body: { email: admin.email, password: admin.password, tenant: admin.tenant } });
  t.equal(login.status, 200, login.text);
  token = (login.body as { accessToken: string }).accessToken;

  const created = await rest("/v1/webhooks", { body: { url: `http://${hostPort}/hooks`, eventTypes: ["JOB_EVENT_TYPE_JOB_SUCCEEDED"], description: "walkthrough" } });
  t.equal(created.status, 200, created.text);
  const { webhook, secret: shown } = created.body as { webhook: { name: string; url: string }; secret: string };
  t.match(shown, /^whsec_[A-Za-z0-9+/=]+$/, "the secret, shown once");
  t.match(webhook.name, /^webhooks\/[0-9a-f-]{36}$/);
  secret = shown;
  webhookName = webhook.name;
  const fetched = await rest(`/v1/${webhookName}`);
  t.equal(fetched.status, 200, fetched.text);
  t.notMatch(fetched.text, shown.slice(6), "and never again");

  const pipelineId = `hooked-${randomBytes(4).toString("hex")}`;
  const pipeline = await rest(`/v1/pipelines?pipelineId=${pipelineId}`, { body: { displayName: "Hooked", config: { stages: [{ stage: "STAGE_INGEST" }, { stage: "STAGE_OUTPUT" }] } } });
  t.equal(pipeline.status, 200, pipeline.text);
  const job = await rest("/v1/jobs", { body: { pipeline: `pipelines/${pipelineId}`, document: { text: documentText } } });
  t.equal(job.status, 200, job.text);
  jobName = (job.body as { job: { name: string } }).job.name;
  t.match(jobName, /^jobs\/[0-9a-f-]{36}$/);

  const arrival = await waitFor(t, "a job_succeeded delivery for the job", () => arrivals.find((a) => a.body.data?.job === jobName), waiting);
  t.ok(arrival.verified, "verified by the standardwebhooks library with the secret shown once");
  t.equal(arrival.body.type, "job_succeeded");
  t.equal(arrival.body.data?.type, "JOB_EVENT_TYPE_JOB_SUCCEEDED");
  t.equal(arrival.body.data?.resultUrl, `${mesh.isolated.config.webhooks.publicUrl}/v1/${jobName}/result`, "the result link, on the configured public URL");
  t.ok(arrivals.every((a) => a.verified), "every request the receiver got verifies");
  eventId = arrival.id;
  // The link's path is the gateway's GetJobResult.
  const result = await rest(new URL(arrival.body.data!.resultUrl!).pathname);
  t.equal(result.status, 200, result.text);
  // [ingest, output] extracts no text: the result is the document itself, named and hashed.
  const stored = (result.body as { result?: { name?: string; sha256?: string } }).result;
  t.equal(stored?.name, `${jobName}/result`);
  t.equal(stored?.sha256, createHash("sha256").update(documentText).digest("hex"), "the document the job was given");
});

t.test("REST - the delivery log shows it SUCCEEDED after one attempt; a replay sends the same webhook-id again, logged as a replay", async (t) => {
  const listed = await waitFor(t, "the delivery SUCCEEDED in the log", async () => {
    const reply = await rest(`/v1/${webhookName}/deliveries`);
    if (reply.status !== 200) throw new Error(`list answered ${reply.status}: ${reply.text}`);
    const found = ((reply.body as { deliveries?: DeliveryJson[] }).deliveries ?? []).find((d) => d.eventId === eventId);
    return found?.status === "WEBHOOK_DELIVERY_STATUS_SUCCEEDED" ? found : undefined;
  }, waiting);
  t.equal(listed.job, jobName);
  t.equal(listed.eventType, "JOB_EVENT_TYPE_JOB_SUCCEEDED");
  t.equal(listed.attemptCount, 1);
  t.equal(listed.attempts?.length, 1, "one attempt");
  t.match(listed.attempts?.[0], { attempt: 1, outcome: "WEBHOOK_ATTEMPT_OUTCOME_SUCCEEDED", statusCode: 204 });
  t.notOk(listed.attempts?.[0].replay, "the first attempt is not a replay");
  delivery = listed;

  const replayed = await rest(`/v1/${listed.name}:replay`, { body: {} });
  t.equal(replayed.status, 200, replayed.text);
  await waitFor(t, "the replay at the receiver", () => verifiedWith(eventId) >= 2, waiting);
  t.equal(verifiedWith(eventId), 2, "the same webhook-id, verified, a second time");

  const after = await waitFor(t, "the replay's attempt in the log", async () => {
    const reply = await rest(`/v1/${listed.name}`);
    const d = (reply.body as { delivery?: DeliveryJson }).delivery;
    return d?.status === "WEBHOOK_DELIVERY_STATUS_SUCCEEDED" && d.attempts?.length === 2 ? d : undefined;
  }, waiting);
  t.match(after.attempts?.[1], { attempt: 2, outcome: "WEBHOOK_ATTEMPT_OUTCOME_SUCCEEDED", replay: true }, "the second attempt, marked replay");
  const relisted = await rest(`/v1/${webhookName}/deliveries`);
  const inList = ((relisted.body as { deliveries?: DeliveryJson[] }).deliveries ?? []).find((d) => d.eventId === eventId);
  t.equal(inList?.attempts?.length, 2, "the list shows both attempts too");
});

t.test("grpcurl-style - buf curl lists the delivery and replays it against WebhookService directly", async (t) => {
  t.ok(delivery, "the REST case found the delivery");
  const { deliveries } = (await grpcurl("ListWebhookDeliveries", { parent: webhookName })) as { deliveries?: DeliveryJson[] };
  const listed = deliveries?.find((d) => d.eventId === eventId);
  t.equal(listed?.name, delivery?.name);
  t.equal(listed?.status, "WEBHOOK_DELIVERY_STATUS_SUCCEEDED");
  t.equal(listed?.attempts?.length, 2, "both attempts so far");

  const replayed = (await grpcurl("ReplayWebhookDelivery", { name: delivery!.name })) as { delivery?: DeliveryJson };
  t.equal(replayed.delivery?.name, delivery!.name);
  await waitFor(t, "the second replay at the receiver", () => verifiedWith(eventId) >= 3, waiting);
  t.equal(verifiedWith(eventId), 3, "the same webhook-id, verified, a third time");

  const after = await waitFor(t, "the third attempt in the log", async () => {
    const { deliveries: now } = (await grpcurl("ListWebhookDeliveries", { parent: webhookName, filter: `event_id = "${eventId}"` })) as { deliveries?: DeliveryJson[] };
    const d = now?.[0];
    return d?.status === "WEBHOOK_DELIVERY_STATUS_SUCCEEDED" && d.attempts?.length === 3 ? d : undefined;
  }, waiting);
  t.match(after.attempts?.[2], { attempt: 3, outcome: "WEBHOOK_ATTEMPT_OUTCOME_SUCCEEDED", replay: true }, "the third attempt, marked replay");
  t.equal(arrivals.filter((a) => a.verified && a.body.type === "job_succeeded").length, 3, "one event, delivered once and replayed twice, nothing else");
});

/**
 * The gateway records what it refuses at the edge, through a real Deno gateway in front of the
 * real mesh: a call without a credential (401), a viewer's write (403) and a rate-limited burst
 * (429), over REST and Connect pass-through, each leave exactly one event with recorder "gateway"
 * on the namespace's audit stream, read here directly with an ordered consumer. A call the
 * gateway admits is the service's to record: the gateway writes nothing for it. No event holds
 * the credential the call presented.
 */
import t, { type Test } from "tap";
import { fromBinary, toJsonString } from "@bufbuild/protobuf";
import { jetstream, jetstreamManager, type ConsumerMessages } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { AuditEventSchema, type AuditEvent } from "../gen/jobmesh/v1/audit_pb.js";
import { PrincipalKind } from "../gen/jobmesh/v1/auth_pb.js";
import { createAuditTopology, provisionAuditTopology, removeAuditTopology } from "../internal/bus/topology.ts";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { testPassword } from "./support/auth.ts";
import { fetchAnswer, startGatewayMesh } from "./support/gateway.ts";
import { natsUrl } from "./support/isolation.ts";
import { waitFor } from "./support/wait.ts";

// A mesh and a Deno process start here; a loaded machine needs more than the default.
t.setTimeout(300_000);

/** Tiny buckets, so a burst is refused within a few calls (each scenario names its own client address). */
const burst = 3;
const gateway = await startGatewayMesh(t, {
  env: {
    // This test stands in for a load balancer: its x-forwarded-for gives each scenario an address (and bucket) of its own.
    JOBMESH_GATEWAY_TRUSTED_PROXIES: "127.0.0.1",
    JOBMESH_GATEWAY_RATE_PER_ADDRESS: "1",
    JOBMESH_GATEWAY_BURST_PER_ADDRESS: String(burst),
    JOBMESH_GATEWAY_RATE_PER_CREDENTIAL: "1",
    JOBMESH_GATEWAY_BURST_PER_CREDENTIAL: String(burst),
  },
});
const { mesh, url } = gateway;
const auth = mesh.auth!;
const topology = createAuditTopology(mesh.isolated.namespace);
const userAgent = "gateway-audit-test/1.0";

// The test's own connection: it outlives the mesh's until the streams are removed.
const nc = await connect({ servers: natsUrl });
const jsm = await jetstreamManager(nc);
t.teardown(async () => {
  await removeAuditTopology(topology, jsm);
  await nc.close();
});

let nextRequest = 0;
/** A request id of this test's own: every event is found by the id of the request that caused it. */
const requestIdOf = (what: string) => `gw-audit-${what}-${++nextRequest}`;

/** GET/DELETE/POST through the gateway, as a client at `clientAddress`, with a request id. */
function call(path: string, init: { method?: string; headers?: Record<string, string>; body?: string; clientAddress: string; requestId: string }) {
  return fetchAnswer(`${url}${path}`, {
    method: init.method ?? "GET",
    headers: { "user-agent": userAgent, "x-forwarded-for": init.clientAddress, "x-request-id": init.requestId, ...init.headers },
    body: init.body,
  });
}

/** Every event on the audit stream, as it arrives (an ordered consumer from the stream's start). */
const seen: { event: AuditEvent; msgId: string; subject: string; bytes: Uint8Array }[] = [];
let reading: { messages: ConsumerMessages; done: Promise<void> } | undefined;

async function startReading(): Promise<void> {
  const consumer = await jetstream(nc).consumers.get(topology.eventsStream);
  const messages = await consumer.consume();
  const done = (async () => {
    for await (const m of messages) seen.push({ event: fromBinary(AuditEventSchema, m.data), msgId: m.headers?.get("Nats-Msg-Id") ?? "", subject: m.subject, bytes: m.data });
  })();
  reading = { messages, done };
}
t.teardown(async () => {
  await reading?.messages.close();
  await reading?.done;
});

const eventsOf = (requestId: string) => seen.filter((s) => s.event.requestId === requestId);
const byGateway = (requestId: string) => eventsOf(requestId).filter((s) => s.event.recorder === "gateway");

let sentinels = 0;
/**
 * Every event of `requestId`, counted only once a sentinel recorded after it has arrived: waits
 * for the first event of the call (`first`), then makes a sentinel call whose event comes from
 * the same recorder and waits for that, so a late second event of the call is already here.
 */
async function settledEventsOf(t: Test, requestId: string, first: () => boolean, sentinel: (requestId: string) => Promise<unknown>, sentinelArrived: (requestId: string) => boolean) {
  await waitFor(t, `the first event of ${requestId}`, () => first(), { timeoutMs: 60_000, intervalMs: 100 });
  const sentinelId = requestIdOf("sentinel");
  await sentinel(sentinelId);
  await waitFor(t, `the sentinel after ${requestId}`, () => sentinelArrived(sentinelId), { timeoutMs: 60_000, intervalMs: 100 });
  return eventsOf(requestId);
}

/** The gateway's sentinel: a refusal of its own (401, or 429 past a burst: either is the gateway's to record), from an address of its own. */
const gatewaySentinel = (requestId: string) => call("/v1/pipelines", { clientAddress: `192.0.2.${(++sentinels % 250) + 1}`, requestId });

/** Every event of `requestId` once the gateway's is here and the gateway has published what it recorded after it. */
function gatewayEventsOf(t: Test, requestId: string) {
  return settledEventsOf(t, requestId, () => byGateway(requestId).length > 0, gatewaySentinel, (id) => byGateway(id).length > 0);
}

/** Every event of `requestId` once a service's is here and PipelineService has published what it recorded after it. */
async function serviceEventsOf(t: Test, requestId: string) {
  const byService = (id: string) => eventsOf(id).filter((s) => s.event.recorder !== "gateway");
  const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1" }));
  const admin = await auth.headersFor("admin");
  return settledEventsOf(t, requestId, () => byService(requestId).length > 0, (id) => pipelines.listPipelines({}, { headers: { ...admin, "x-request-id": id } }), (id) => byService(id).length > 0);
}

/** The event is the one the gateway published, on the subject of its tenant, keyed by its own id, holding none of `secrets`. */
function checkPublished(t: Test, found: (typeof seen)[number], secrets: string[]) {
  const { event } = found;
  t.match(event.name, /^auditEvents\/[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, "named auditEvents/<uuid v4>");
  t.equal(found.msgId, event.name.slice("auditEvents/".length), "Nats-Msg-Id is the event id");
  t.equal(found.subject, topology.eventsSubject(event.tenant), "published on its tenant's subject");
  t.equal(event.userAgent, userAgent);
  t.equal(event.request, "", "the body was not read");
  t.ok(event.eventTime && event.duration, "event time and duration are set");
  t.same([event.sequence, event.prevHash, event.hash], [0n, "", ""], "sequence and hashes are left to the store");
  const text = `${Buffer.from(found.bytes).toString("latin1")}\n${toJsonString(AuditEventSchema, event)}`;
  for (const secret of secrets) t.notOk(text.includes(secret), "the credential appears nowhere in the event");
}

t.test("no audit stream: a refusal is answered all the same, spooled, and published once the stream is back", async (t) => {
  // The services provisioned the stream when they started; the gateway never does. Without it:
  await jsm.streams.delete(topology.eventsStream);
  const requestId = requestIdOf("no-stream");
  const early = await call("/v1/pipelines/document-default", { clientAddress: "198.51.100.1", requestId });
  t.equal(early.status, 401);
  t.equal((await fetchAnswer(`${url}/healthz`)).status, 200, "the gateway did not stop");
  await provisionAuditTopology(topology, mesh.infra.bus.jsm, { streamMaxBytes: mesh.isolated.config.streamMaxBytes });
  await startReading();
  const events = await gatewayEventsOf(t, requestId);
  t.equal(events.length, 1, "the spooled event was replayed, once");
  t.equal(events[0]?.event.outcome?.code, 16);
});

t.test("401 - a REST call without a credential: one event, anonymous, unattributed, UNAUTHENTICATED with the client's message", async (t) => {
  const requestId = requestIdOf("anonymous");
  const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
  const answer = await call("/v1/pipelines/document-default", { clientAddress: "198.51.100.2", requestId, headers: { traceparent: `00-${traceId}-00f067aa0ba902b7-01` } });
  t.equal(answer.status, 401);
  const events = await gatewayEventsOf(t, requestId);
  t.equal(events.length, 1, "exactly one event for the call");
  const [found] = events;
  const { event } = found!;
  t.equal(event.recorder, "gateway");
  t.equal(event.action, "jobmesh.v1.PipelineService.GetPipeline");
  t.equal(event.tenant, "", "the unattributed chain");
  t.same({ subject: event.actor?.subject, kind: event.actor?.kind, hint: event.actor?.credentialHint }, { subject: "", kind: PrincipalKind.UNSPECIFIED, hint: "" });
  t.equal(event.outcome?.code, 16);
  t.equal(event.outcome?.message, (answer.body as { message: string }).message, "the message the client got");
  t.equal(event.clientAddress, "198.51.100.2", "the client as the gateway sees it (from its trusted proxy)");
  t.equal(event.requestId, answer.headers.get("x-request-id"), "the request id the gateway answered with");
  t.equal(event.traceId, traceId, "the client's trace (this gateway opens no span of its own)");
  checkPublished(t, found!, []);
});

t.test("401 - an unknown API key: named by its public prefix, never its secret", async (t) => {
  const requestId = requestIdOf("bad-key");
  const secretPart = "Q".repeat(43);
  const apiKey = `jmk_zz99zz99_${secretPart}`;
  const answer = await call("/v1/pipelines", { clientAddress: "198.51.100.3", requestId, headers: { "x-api-key": apiKey } });
  t.equal(answer.status, 401);
  const events = await gatewayEventsOf(t, requestId);
  t.equal(events.length, 1, "exactly one event for the call");
  const { event } = events[0]!;
  t.equal(event.action, "jobmesh.v1.PipelineService.ListPipelines");
  t.same({ kind: event.actor?.kind, hint: event.actor?.credentialHint, tenant: event.tenant }, { kind: PrincipalKind.API_KEY, hint: "jmk_zz99zz99", tenant: "" });
  checkPublished(t, events[0]!, [apiKey, secretPart]);
});

t.test("401 - a Connect pass-through call without a credential is recorded the same way", async (t) => {
  const requestId = requestIdOf("connect");
  const answer = await call("/jobmesh.v1.PipelineService/GetPipeline", {
    method: "POST",
    clientAddress: "198.51.100.4",
    requestId,
    headers: { "content-type": "application/json", "connect-protocol-version": "1" },
    body: JSON.stringify({ name: "pipelines/document-default" }),
  });
  t.equal(answer.status, 401, "Connect's unauthenticated");
  const events = await gatewayEventsOf(t, requestId);
  t.equal(events.length, 1, "exactly one event for the call");
  t.equal(events[0]!.event.action, "jobmesh.v1.PipelineService.GetPipeline");
  t.equal(events[0]!.event.outcome?.code, 16);
});

t.test("403 - a viewer's write: its subject, tenant, roles and token id, PERMISSION_DENIED", async (t) => {
  const viewer = await auth.userFor("viewer");
  const token = await auth.tokenFor("viewer");
  const requestId = requestIdOf("viewer-write");
  const answer = await call("/v1/pipelines/document-default", { method: "DELETE", clientAddress: "198.51.100.5", requestId, headers: { authorization: `Bearer ${token}` } });
  t.equal(answer.status, 403);
  const events = await gatewayEventsOf(t, requestId);
  t.equal(events.length, 1, "exactly one event for the call");
  const { event } = events[0]!;
  t.equal(event.action, "jobmesh.v1.PipelineService.DeletePipeline");
  t.equal(event.tenant, viewer.tenantId, "the viewer's tenant's chain");
  t.same({ subject: event.actor?.subject, kind: event.actor?.kind, roles: event.actor?.roles }, { subject: viewer.name, kind: PrincipalKind.USER, roles: ["viewer"] });
  t.match(event.actor?.credentialHint, /^tokens\/[0-9a-f-]{36}$/, "the token named by its id");
  t.equal(event.outcome?.code, 7);
  t.equal(event.outcome?.message, (answer.body as { message: string }).message);
  checkPublished(t, events[0]!, [token, token.split(".")[2]!, testPassword]);
});

t.test("429 - an anonymous burst: every refusal one event, the 429s in the unattributed chain", async (t) => {
  const answers: { requestId: string; status: number }[] = [];
  for (let i = 0; i < 20 && !answers.some((a) => a.status === 429); i++) {
    const requestId = requestIdOf("anonymous-burst");
    answers.push({ requestId, status: (await call("/v1/pipelines", { clientAddress: "198.51.100.6", requestId })).status });
  }
  t.ok(answers.some((a) => a.status === 429), `the burst was limited: ${answers.map((a) => a.status).join(",")}`);
  for (const { requestId, status } of answers) {
    const events = await gatewayEventsOf(t, requestId);
    t.equal(events.length, 1, `one event for the ${status}`);
    t.equal(events[0]?.event.outcome?.code, status === 429 ? 8 : 16);
    t.equal(events[0]?.event.tenant, "");
  }
});

t.test("429 - a signed-in caller past its credential's burst: attributed to it; its admitted calls are the service's to record", async (t) => {
  const user = await auth.newUser("viewer");
  const { accessToken } = await auth.client.login({ email: user.email, password: user.password, tenant: user.tenant });
  const answers: { requestId: string; status: number }[] = [];
  for (let i = 0; i < 30 && !answers.some((a) => a.status === 429); i++) {
    const requestId = requestIdOf("user-burst");
    answers.push({ requestId, status: (await call("/v1/pipelines", { clientAddress: "198.51.100.7", requestId, headers: { authorization: `Bearer ${accessToken}` } })).status });
  }
  const limited = answers.filter((a) => a.status === 429);
  const admitted = answers.filter((a) => a.status === 200);
  t.equal(limited.length, 1, `the burst was limited: ${answers.map((a) => a.status).join(",")}`);
  t.ok(admitted.length >= 1, "calls within the burst were admitted");
  const events = await gatewayEventsOf(t, limited[0]!.requestId);
  t.equal(events.length, 1, "exactly one event for the 429");
  const { event } = events[0]!;
  t.same({ code: event.outcome?.code, tenant: event.tenant, subject: event.actor?.subject, roles: event.actor?.roles }, { code: 8, tenant: user.tenantId, subject: user.name, roles: ["viewer"] });
  checkPublished(t, events[0]!, [accessToken]);
  // The 429 was recorded after every admitted call of the burst, and one gateway publishes in
  // order: had it recorded an admitted call, that event would be here by now.
  for (const { requestId } of admitted) {
    t.equal(byGateway(requestId).length, 0, "no gateway event for an admitted call");
    const recorded = await serviceEventsOf(t, requestId);
    t.same(recorded.map((s) => [s.event.recorder, s.event.action, s.event.outcome?.code]), [["pipelines", "jobmesh.v1.PipelineService.ListPipelines", 0]], "its one event is the service's");
  }
});

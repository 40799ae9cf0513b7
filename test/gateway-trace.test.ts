/**
 * The gateway's span: one trace per request across the Deno gateway and the services. The gateway
 * runs with Deno's built-in OpenTelemetry exporting to a real OTLP/HTTP receiver here (a node:http
 * server collecting POST /v1/traces); the services' spans are the test mesh's (mesh.spans). A
 * request's trace must hold the gateway's server span and, under it, the service's span; and a
 * gateway without an OTLP endpoint must export nothing, whatever OTEL_* its parent has.
 */
import t, { type Test } from "tap";
import { createServer, type Server } from "node:http";
import { once } from "node:events";
import type { AddressInfo } from "node:net";
import { startGatewayProcess } from "../internal/mesh/gateway-process.ts";
import { startGatewayMesh } from "./support/gateway.ts";

// A mesh, a Deno process and the exporter's batches (sent every few seconds): room for a loaded machine.
t.setTimeout(300_000);

/** One span as OTLP/JSON carries it, with the service.name of its resource. */
interface ExportedSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  /** OTLP SpanKind: 2 server, 3 client. */
  kind: number;
}

const serverKind = 2;

interface OtlpJsonRequest {
  resourceSpans?: {
    resource?: { attributes?: { key: string; value: { stringValue?: string } }[] };
    scopeSpans?: { spans?: Omit<ExportedSpan, "service">[] }[];
  }[];
}

/** A real OTLP/HTTP receiver on 127.0.0.1: keeps every span posted to /v1/traces, counts every request. */
async function startOtlpReceiver(t: Test) {
  const spans: ExportedSpan[] = [];
  const requests: string[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      requests.push(`${req.method} ${req.url} ${req.headers["content-type"]}`);
      if (req.method === "POST" && req.url === "/v1/traces" && req.headers["content-type"]?.startsWith("application/json")) {
        const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as OtlpJsonRequest;
        for (const resourceSpans of body.resourceSpans ?? []) {
          const service = resourceSpans.resource?.attributes?.find((a) => a.key === "service.name")?.value.stringValue ?? "";
          for (const scope of resourceSpans.scopeSpans ?? []) for (const span of scope.spans ?? []) spans.push({ ...span, service });
        }
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
      } else {
        res.writeHead(404).end();
      }
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spans, requests };
}

/** Polls `check` until it answers a value or `timeoutMs` passes. */
async function eventually<T>(check: () => T | undefined, timeoutMs = 60_000): Promise<T | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined || Date.now() > deadline) return value;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const hex = (bytes: number) => Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0")).join("");

const receiver = await startOtlpReceiver(t);
const { mesh, url } = await startGatewayMesh(t, { otlpEndpoint: receiver.url });
const admin = await mesh.auth!.headersFor("admin");

/** The pipelines service's GetPipeline spans (from mesh.spans). */
const getPipelineSpans = () => mesh.spans.getFinishedSpans().filter((s) => s.name.endsWith("/GetPipeline"));

/** GetPipeline over REST. */
async function getPipeline(headers: Record<string, string>): Promise<void> {
  const res = await fetch(`${url}/v1/pipelines/document-default`, { headers: { ...admin, ...headers } });
  await res.body?.cancel();
  if (res.status !== 200) throw new Error(`GET /v1/pipelines/document-default answered ${res.status}`);
}

/** GetPipeline as Connect JSON, passed through as it is. */
async function getPipelineByConnect(headers: Record<string, string>): Promise<void> {
  const res = await fetch(`${url}/jobmesh.v1.PipelineService/GetPipeline`, {
    method: "POST",
    headers: { ...admin, "content-type": "application/json", ...headers },
    body: JSON.stringify({ name: "pipelines/document-default" }),
  });
  await res.body?.cancel();
  if (res.status !== 200) throw new Error(`Connect GetPipeline answered ${res.status}`);
}

/** Sends GetPipeline with a client traceparent and checks the trace: client span → gateway server span → gateway call → service span. */
async function checkJoinsClientTrace(t: Test, send: (headers: Record<string, string>) => Promise<void>): Promise<void> {
  const traceId = hex(16);
  const clientSpanId = hex(8);
  await send({ traceparent: `00-${traceId}-${clientSpanId}-01` });

  const serviceSpan = await eventually(() => getPipelineSpans().find((s) => s.spanContext().traceId === traceId));
  t.ok(serviceSpan, "the pipelines service recorded its GetPipeline span in the client's trace");
  const serviceParent = serviceSpan?.parentSpanContext?.spanId;
  t.ok(serviceParent, "with a parent");
  t.not(serviceParent, clientSpanId, "its parent is not the client's span (the gateway's own span sits between them)");

  const gatewayServerSpan = await eventually(() => receiver.spans.find((s) => s.traceId === traceId && s.kind === serverKind));
  t.ok(gatewayServerSpan, "the gateway exported a server span in the client's trace");
  t.equal(gatewayServerSpan?.service, "jobmesh-gateway", "under the service name jobmesh-gateway");
  t.equal(gatewayServerSpan?.parentSpanId, clientSpanId, "whose parent is the client's span");

  const serviceParentInGateway = await eventually(() => receiver.spans.find((s) => s.spanId === serviceParent));
  t.ok(serviceParentInGateway, `the service span's parent ${serviceParent} is a span the gateway exported`);
  t.equal(serviceParentInGateway?.traceId, traceId, "in the same trace");
  t.equal(serviceParentInGateway?.parentSpanId, gatewayServerSpan?.spanId, "the call the gateway made while serving this request");
}

t.test("a client's traceparent on a REST call: the gateway's server span joins the client's trace, and the service's span is its child", (t) => checkJoinsClientTrace(t, getPipeline));

t.test("a client's traceparent on a Connect call passed through: the same trace, gateway span between client and service", (t) => checkJoinsClientTrace(t, getPipelineByConnect));

t.test("no traceparent: the gateway starts the trace, and the service's span is in it", async (t) => {
  const before = new Set(getPipelineSpans().map((s) => s.spanContext().spanId));
  await getPipeline({});

  const serviceSpan = await eventually(() => getPipelineSpans().find((s) => !before.has(s.spanContext().spanId)));
  t.ok(serviceSpan, "the pipelines service recorded a GetPipeline span");
  const traceId = serviceSpan?.spanContext().traceId;
  const serviceParent = serviceSpan?.parentSpanContext?.spanId;
  t.ok(serviceParent, "with a parent: it did not start a trace of its own");

  const serviceParentInGateway = await eventually(() => receiver.spans.find((s) => s.spanId === serviceParent));
  t.ok(serviceParentInGateway, "the parent is a span the gateway exported");
  t.equal(serviceParentInGateway?.traceId, traceId, "in the service span's trace");
  const gatewayServerSpan = await eventually(() => receiver.spans.find((s) => s.spanId === serviceParentInGateway?.parentSpanId && s.kind === serverKind));
  t.ok(gatewayServerSpan, "under the gateway's server span for the request");
  t.equal(gatewayServerSpan?.traceId, traceId, "in the same trace");
  t.notOk(gatewayServerSpan?.parentSpanId, "which is the trace's root");
});

t.test("without otlpEndpoint the gateway exports nothing, even with OTEL_* set around it, and forwards the client's traceparent as before", async (t) => {
  const quiet = await startOtlpReceiver(t);
  // What an operator's shell might hold: the gateway inherits none of it.
  // eslint-disable-next-line no-restricted-properties
  const env = process.env;
  const saved = { OTEL_DENO: env.OTEL_DENO, OTEL_EXPORTER_OTLP_ENDPOINT: env.OTEL_EXPORTER_OTLP_ENDPOINT };
  env.OTEL_DENO = "true";
  env.OTEL_EXPORTER_OTLP_ENDPOINT = quiet.url;
  const starting = startGatewayProcess({
    JOBMESH_GATEWAY_PORT: "0",
    JOBMESH_HOST: "127.0.0.1",
    JOBMESH_JOBS_URL: "http://127.0.0.1:1",
    JOBMESH_PIPELINES_URL: mesh.pipelines.url,
    JOBMESH_AUTH_URL: mesh.auth!.server.url,
    REDIS_URL: mesh.isolated.env.REDIS_URL!,
    JOBMESH_NAMESPACE: mesh.isolated.namespace,
    JOBMESH_GATEWAY_SOURCE_ADDRESS: "127.0.0.2",
  });
  // The child was spawned synchronously with the call: its environment is fixed already.
  for (const [name, value] of Object.entries(saved)) {
    if (value === undefined) delete env[name];
    else env[name] = value;
  }
  const plain = await starting;
  t.teardown(() => plain.stop());

  const traceId = hex(16);
  const clientSpanId = hex(8);
  const res = await fetch(`${plain.url}/v1/pipelines/document-default`, { headers: { ...admin, traceparent: `00-${traceId}-${clientSpanId}-01` } });
  await res.body?.cancel();
  t.equal(res.status, 200);
  const serviceSpan = await eventually(() => getPipelineSpans().find((s) => s.spanContext().traceId === traceId));
  t.equal(serviceSpan?.parentSpanContext?.spanId, clientSpanId, "the service's span is the client's span's child: no gateway span between them");
  // Deno sends what it has at exit: after a clean stop, a gateway with telemetry on would have posted by now.
  await plain.stop();
  t.same(quiet.requests, [], "and the gateway sent nothing to the OTLP endpoint in its parent's environment");
});

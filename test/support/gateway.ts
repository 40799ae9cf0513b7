/**
 * The Deno edge gateway as its own process (`deno run cmd/gateway/main.ts`), as a deployment
 * runs it, in front of a test mesh with authentication on. The mesh's services trust 127.0.0.2
 * as their proxy and the gateway connects to them from 127.0.0.2, so the client address the
 * gateway forwards is believed, as in production.
 */
import { join } from "node:path";
import { startGatewayProcess } from "../../internal/mesh/gateway-process.ts";
import { startTestMesh, type TestMesh } from "./mesh.ts";

interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

export interface GatewayMeshOptions {
  /** Extra gateway environment (limits, rate settings, ...), over the defaults set here. */
  env?: Record<string, string>;
  /** Extra environment of the mesh (its isolation overrides). */
  meshEnv?: Record<string, string>;
  /** Also serve JobService and start a stage worker. */
  jobs?: boolean;
  /** Also serve AuditService and the audit store (otherwise its routes answer 501, as for a mesh without it). */
  audit?: boolean;
  /** Also serve WebhookService with its delivery engine (otherwise its routes answer 501). */
  webhooks?: boolean;
  /** OTLP/HTTP base URL the gateway exports its spans to (startGatewayProcess's option). */
  otlpEndpoint?: string;
}

export interface GatewayMesh {
  mesh: TestMesh;
  /** http://127.0.0.1:PORT, as the gateway's "serving" line says. */
  url: string;
  /** Everything the gateway printed so far: its "serving" line, then one access-log JSON line per request. */
  stdout(): string;
  /** SIGTERM, then SIGKILL after 10 s if it has not exited; then the mesh closes. Runs once, at teardown if not before. */
  stop(): Promise<void>;
}

/** A closed port: a backend the mesh does not serve points here rather than at a default port some other mesh may own. */
const unservedUrl = "http://127.0.0.1:1";

/** Starts a test mesh whose services trust 127.0.0.2 as their proxy, and a real Deno gateway process in front of it. */
export async function startGatewayMesh(t: Teardown, options: GatewayMeshOptions = {}): Promise<GatewayMesh> {
  const mesh = await startTestMesh({ JOBMESH_TRUSTED_PROXIES: "127.0.0.2", ...options.meshEnv }, { auth: true, jobs: options.jobs, audit: options.audit, webhooks: options.webhooks });
  let stopped: Promise<void> | undefined;
  let gateway: Awaited<ReturnType<typeof startGatewayProcess>> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      await gateway?.stop();
      await mesh.close();
    })());
  t.teardown(stop);
  gateway = await startGatewayProcess({
    JOBMESH_GATEWAY_PORT: "0",
    JOBMESH_HOST: "127.0.0.1",
    JOBMESH_JOBS_URL: mesh.jobs?.url ?? unservedUrl,
    JOBMESH_PIPELINES_URL: mesh.pipelines.url,
    JOBMESH_AUTH_URL: mesh.auth!.server.url,
    ...(mesh.audit ? { JOBMESH_AUDIT_URL: mesh.audit.url } : {}),
    ...(mesh.webhooks ? { JOBMESH_WEBHOOKS_URL: mesh.webhooks.url } : {}),
    REDIS_URL: mesh.isolated.env.REDIS_URL!,
    JOBMESH_NAMESPACE: mesh.isolated.namespace,
    JOBMESH_GATEWAY_SOURCE_ADDRESS: "127.0.0.2",
    JOBMESH_LOG_LEVEL: "info",
    // It records what it refuses at the edge on the namespace's audit stream, as `jobmesh up` runs it.
    ...(mesh.isolated.config.audit.enabled ? { JOBMESH_GATEWAY_NATS_URL: mesh.isolated.env.NATS_URL!, JOBMESH_GATEWAY_AUDIT_SPOOL_DIR: join(mesh.isolated.config.audit.spoolDir, "gateway") } : {}),
    ...options.env,
  }, { otlpEndpoint: options.otlpEndpoint }).catch(async (error: unknown) => {
    await stop();
    throw error;
  });
  return { mesh, url: gateway.url, stdout: gateway.output, stop };
}

/** One answer of the gateway, its body read: parsed JSON when it is JSON, else the text. */
export interface GatewayAnswer {
  status: number;
  headers: Headers;
  text: string;
  body: unknown;
}

/** fetch(url, init), with the body read whole and parsed when it is JSON (the tests' assertions say when it is not). */
export async function fetchAnswer(url: string, init: RequestInit & { duplex?: "half" } = {}): Promise<GatewayAnswer> {
  const res = await fetch(url, init);
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON: kept as text.
  }
  return { status: res.status, headers: res.headers, text, body };
}

/** The JSON body of every gateway error: google.rpc.Status (code is the numeric gRPC code). */
export interface StatusBody {
  code: number;
  message: string;
  details: Record<string, unknown>[];
}

/** True when `body` is shaped like google.rpc.Status in proto3 JSON. */
export function isStatusBody(body: unknown): body is StatusBody {
  if (typeof body !== "object" || body === null) return false;
  const { code, message, details } = body as Record<string, unknown>;
  return Number.isInteger(code) && typeof message === "string" && Array.isArray(details) && details.every((d) => typeof d === "object" && d !== null);
}

/** The gateway's stdout lines that are JSON objects (its "serving" line and access log), parsed. */
export function jsonLinesOf(stdout: string): Record<string, unknown>[] {
  return stdout.split("\n").flatMap((line) => {
    const entry = parseJsonLine(line);
    return entry ? [entry] : [];
  });
}

function parseJsonLine(line: string): Record<string, unknown> | undefined {
  if (!line.startsWith("{")) return undefined;
  try {
    const value: unknown = JSON.parse(line);
    return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

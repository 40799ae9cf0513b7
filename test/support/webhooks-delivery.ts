/**
 * A world for the webhook delivery tests and bench: a fresh database and namespace with the
 * events stream, a tenant, subscriptions written as the API would write them (secrets sealed),
 * local receivers on 127.0.0.1 (allowed by exact host:port) that verify every request with the
 * `standardwebhooks` library, and JobEvents published to the stream as the outbox relay does.
 */
import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { Webhook } from "standardwebhooks";
import { JobEventSchema, JobEventType, JobState, type JobEvent } from "../../gen/jobmesh/v1/events_pb.js";
import type { AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import { connectBus, type Bus } from "../../internal/bus/index.ts";
import type { WebhooksConfig } from "../../internal/config/index.ts";
import { createPool, ensureTenant, migrate, type Pool } from "../../internal/db/index.ts";
import { createTopology, provisionTopology, removeTopology, type Topology } from "../../internal/bus/topology.ts";
import { createLogger, type Logger } from "../../internal/telemetry/index.ts";
import { startWebhookDelivery, type WebhookDelivery, type WebhookDeliveryDeps } from "../../internal/webhooks/delivery.ts";
import { generateWebhookSecret, sealWebhookSecret } from "../../internal/webhooks/secrets.ts";
import { webhooksChangedChannel } from "../../internal/webhooks/subscriptions.ts";
import { isolate, type Isolated } from "./isolation.ts";

interface Teardown {
  teardown(fn: () => unknown): void;
}

/** One request a receiver got, after the standardwebhooks library verified it (or not). */
export interface Arrival {
  id: string;
  body: { type: string; timestamp: string; data: Record<string, unknown> };
  headers: Record<string, string>;
  verified: boolean;
  /** When its request's head came in (Date.now()). */
  at: number;
}

export type Answer = (arrival: Arrival, res: ServerResponse) => void;

export interface Receiver {
  url: string;
  hostPort: string;
  arrivals: Arrival[];
  /** How the next requests are answered (default 200 "ok"). */
  answer: Answer;
  /** Counts per webhook-id. */
  countOf(id: string): number;
  close(): Promise<void>;
  /** Listens again on the same port after close(). */
  reopen(): Promise<void>;
}

export interface DeliveryWorld {
  isolated: Isolated;
  db: Pool;
  bus: Bus;
  log: Logger;
  topology: Topology;
  tenantId: string;
  keyEncryptionKey: Buffer;
  audit: AuditEvent[];
  /** A receiver verifying with `secrets` (each one alone must verify). */
  receiver(secrets: () => string[]): Promise<Receiver>;
  /** Inserts an ACTIVE subscription as the API would; returns its id and secret. */
  subscribe(url: string, fields?: Partial<SubscriptionFields>): Promise<{ id: string; secret: string }>;
  /** Publishes a JobEvent on the events stream (as the outbox relay does). */
  publish(fields?: MessageInitShape<typeof JobEventSchema>): Promise<JobEvent>;
  /** Starts a delivery engine in this process, stopped at teardown. */
  start(config: Partial<WebhooksConfig>, extra?: Partial<WebhookDeliveryDeps>): Promise<WebhookDelivery>;
  /** Starts a delivery engine in a child process (SIGKILL-able). */
  startProcess(config: Partial<WebhooksConfig>): ChildProcess;
  config(over: Partial<WebhooksConfig>): WebhookDeliveryDeps["config"];
  /** Stops the in-process engines and removes every subscription (and so its deliveries): the next case starts clean. */
  reset(): Promise<void>;
  statusCounts(webhookId: string): Promise<Record<string, number>>;
}

export interface SubscriptionFields {
  eventTypes: number[];
  filterPipeline: string;
  filterJobLabels: Record<string, string>;
  maxConcurrency: number;
  maxRatePerSecond: number;
  previousSecret: string;
  previousExpire: Date;
}

const childScript = join(import.meta.dirname, "webhooks-delivery-child.ts");

export async function createDeliveryWorld(t: Teardown): Promise<DeliveryWorld> {
  const isolated = await isolate();
  const log = createLogger({ name: "webhooks-delivery-test", level: "warn" });
  await migrate(isolated.databaseUrl, log);
  const db = createPool({ url: isolated.databaseUrl, max: 20 });
  const bus = await connectBus({ url: isolated.config.natsUrl, name: "webhooks-delivery-test", log });
  const topology = createTopology(isolated.namespace, { storageLimits: { streamMaxBytes: 64 * 1024 * 1024, bucketMaxBytes: 0 } });
  await provisionTopology(topology, bus.jsm);
  const tenantId = await ensureTenant(db, `webhooks-${isolated.id}`);
  const keyEncryptionKey = randomBytes(32);
  const engines: WebhookDelivery[] = [];
  const receivers: Receiver[] = [];
  const children: ChildProcess[] = [];
  const hosts: string[] = [];
  const audit: AuditEvent[] = [];
  t.teardown(async () => {
    for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    await Promise.all(engines.map((e) => e.stop()));
    await Promise.all(receivers.map((r) => r.close()));
    await removeTopology(topology, bus.jsm);
    await bus.close();
    await db.end();
    await isolated.drop();
  });

  const config = (over: Partial<WebhooksConfig>): WebhookDeliveryDeps["config"] => ({
    allowHttp: true,
    allowLoopback: false,
    allowHosts: hosts,
    retryScheduleMs: [0, 100, 100, 100, 100, 100],
    // Generous: on a loaded machine a 5 s timeout fired and the attempt was retried (the 410 case).
    timeoutMs: 60_000,
    disableAfterMs: 5 * 86_400_000,
    ...over,
  });

  return {
    isolated, db, bus, log, topology, tenantId, keyEncryptionKey, audit, config,
    async receiver(secrets) {
      const receiver = await startReceiver(secrets);
      hosts.push(receiver.hostPort);
      receivers.push(receiver);
      return receiver;
    },
    async subscribe(url, fields = {}) {
      const id = randomUUID();
      const secret = generateWebhookSecret();
      await db.query(
        `INSERT INTO webhooks (id, tenant_id, url, event_types, filter_pipeline, filter_job_labels, max_concurrency, max_rate_per_second,
           secret_sealed, previous_secret_sealed, previous_secret_expire_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
        [
          id, tenantId, url, fields.eventTypes ?? [], fields.filterPipeline ?? "", JSON.stringify(fields.filterJobLabels ?? {}),
          fields.maxConcurrency ?? 0, fields.maxRatePerSecond ?? 0, sealWebhookSecret(keyEncryptionKey, id, secret),
          fields.previousSecret ? sealWebhookSecret(keyEncryptionKey, id, fields.previousSecret) : null, fields.previousExpire ?? null,
        ],
      );
      await db.query("SELECT pg_notify($1, $2)", [webhooksChangedChannel, tenantId]);
      return { id, secret };
    },
    async publish(fields = {}) {
      const event = create(JobEventSchema, {
        eventId: randomUUID(),
        type: JobEventType.JOB_SUCCEEDED,
        tenant: tenantId,
        job: `jobs/${randomUUID()}`,
        pipeline: "pipelines/document-default",
        pipelineVersion: 1,
        state: JobState.SUCCEEDED,
        eventTime: timestampFromDate(new Date()),
        sequence: 1n,
        ...fields,
      });
      await bus.js.publish(topology.eventSubject(tenantId, event.type), toBinary(JobEventSchema, event), { msgID: event.eventId });
      return event;
    },
    async start(over, extra = {}) {
      const engine = await startWebhookDelivery({
        db, js: bus.js, topology, log, config: config(over), keyEncryptionKey,
        publicUrl: "https://jobmesh.example.com", record: (event) => audit.push(event), ...extra,
      });
      engines.push(engine);
      return engine;
    },
    startProcess(over) {
      const settings = {
        databaseUrl: isolated.databaseUrl, natsUrl: isolated.config.natsUrl, namespace: isolated.namespace,
        keyEncryptionKey: keyEncryptionKey.toString("base64"), config: config(over),
      };
      const child = spawn(process.execPath, [childScript, JSON.stringify(settings)], { stdio: ["ignore", "ignore", "inherit"] });
      children.push(child);
      return child;
    },
    async reset() {
      await Promise.all(engines.splice(0).map((e) => e.stop()));
      await db.query("DELETE FROM webhooks WHERE tenant_id = $1", [tenantId]);
      await db.query("SELECT pg_notify($1, $2)", [webhooksChangedChannel, tenantId]);
    },
    async statusCounts(webhookId) {
      const { rows } = await db.query<{ status: number; n: number }>(
        "SELECT status, count(*)::int AS n FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 GROUP BY status",
        [tenantId, webhookId],
      );
      const names: Record<number, string> = { 1: "pending", 2: "succeeded", 3: "failed" };
      return Object.fromEntries(rows.map((r) => [names[r.status], r.n]));
    },
  };
}

async function startReceiver(secrets: () => string[]): Promise<Receiver> {
  const arrivals: Arrival[] = [];
  const open = new Set<import("node:net").Socket>();
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    // The attempt's arrival: its request's head came in (before the body is read and verified).
    const at = Date.now();
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const raw = Buffer.concat(chunks).toString("utf8");
      const headers = Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k, String(v)]));
      let verified = secrets().length > 0;
      for (const secret of secrets()) {
        try {
          new Webhook(secret).verify(raw, headers);
        } catch {
          verified = false;
        }
      }
      let body: Arrival["body"];
      try {
        body = JSON.parse(raw) as Arrival["body"];
      } catch {
        body = { type: "", timestamp: "", data: {} };
      }
      const arrival = { id: headers["webhook-id"] ?? "", body, headers, verified, at };
      arrivals.push(arrival);
      receiver.answer(arrival, res);
    });
  };
  let server: Server = createServer(handle);
  const track = (s: Server) => s.on("connection", (socket) => {
    open.add(socket);
    socket.on("close", () => open.delete(socket));
  });
  track(server);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as AddressInfo).port;
  const receiver: Receiver = {
    url: `http://127.0.0.1:${port}/hook`,
    hostPort: `127.0.0.1:${port}`,
    arrivals,
    answer: (_arrival, res) => res.end("ok"),
    countOf: (id) => arrivals.filter((a) => a.id === id).length,
    async close() {
      if (!server.listening) return;
      const closed = once(server, "close");
      server.close();
      for (const socket of open) socket.destroy();
      await closed;
    },
    async reopen() {
      server = createServer(handle);
      track(server);
      server.listen(port, "127.0.0.1");
      await once(server, "listening");
    },
  };
  return receiver;
}

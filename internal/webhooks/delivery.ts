/**
 * The delivery engine of a webhooks process: the fan-out (events stream → delivery rows) and the
 * dispatcher (delivery rows → signed HTTP attempts), sharing one LISTEN connection for their
 * wake-ups and one guarded undici dispatcher for their connections. Every webhooks process runs
 * one; several share the work (the stream's durable consumer, SKIP LOCKED claims and leases).
 * The bus must be provisioned (internal/bus/topology.ts: the events stream and the fan-out's
 * durable consumer).
 */
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { Topology } from "../bus/topology.ts";
import type { PoolClient } from "pg";
import type { AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import type { WebhooksConfig } from "../config/index.ts";
import type { Pool } from "../db/index.ts";
import { createGuardedDispatcher, type NetPolicy } from "../netpolicy/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { startDispatcher } from "./dispatcher.ts";
import { startFanout } from "./fanout.ts";
import { firstAttemptDelayMs } from "./schedule.ts";
import { deliveriesDueChannel, webhooksChangedChannel } from "./subscriptions.ts";

export interface WebhookDeliveryDeps {
  db: Pool;
  js: JetStreamClient;
  jsm: JetStreamManager;
  /** The bus topology (provisioned: the events stream and the fan-out's consumer must exist). */
  topology: Pick<Topology, "eventsStream" | "webhooksFanoutConsumer">;
  log: Logger;
  config: Pick<WebhooksConfig, "allowHttp" | "allowLoopback" | "allowHosts" | "retryScheduleMs" | "timeoutMs" | "disableAfterMs">;
  keyEncryptionKey: Buffer;
  /** Base of result links (config.webhooks.publicUrl). */
  publicUrl: string;
  /** The audit sink's record: an automatic disable is recorded there. Without it, only logged. */
  record?: (event: AuditEvent) => void;
  /** Deliveries in flight in this process at most (default 256). */
  maxInFlight?: number;
}

export interface WebhookDelivery {
  /** Stops reading events and claiming; waits for the sends in flight to be recorded. */
  stop(): Promise<void>;
}

/** Starts the fan-out and the dispatcher; resolves once both run. */
export async function startWebhookDelivery(deps: WebhookDeliveryDeps): Promise<WebhookDelivery> {
  const { db, log, config } = deps;
  const policy: NetPolicy = { allowHttp: config.allowHttp, allowLoopback: config.allowLoopback, allowHosts: config.allowHosts };
  const dispatcher = createGuardedDispatcher(policy, { connectTimeoutMs: Math.min(config.timeoutMs, 10_000), keepAliveTimeoutMs: 30_000 });

  let listening: PoolClient | undefined;
  const dispatch = startDispatcher({
    db,
    log,
    keyEncryptionKey: deps.keyEncryptionKey,
    dispatcher,
    policy,
    retryScheduleMs: config.retryScheduleMs,
    timeoutMs: config.timeoutMs,
    disableAfterMs: config.disableAfterMs,
    publicUrl: deps.publicUrl,
    record: deps.record ?? ((event) => log.warn({ action: event.action, resource: event.resource, outcome: event.outcome?.message }, "webhooks: audit event (no audit sink)")),
    changedChannel: webhooksChangedChannel,
    maxInFlight: deps.maxInFlight,
  });
  const fanout = await startFanout({
    db,
    js: deps.js,
    eventsStream: deps.topology.eventsStream,
    consumer: deps.topology.webhooksFanoutConsumer,
    log,
    firstDelayMs: firstAttemptDelayMs(config.retryScheduleMs),
    dueChannel: deliveriesDueChannel,
    onInserted: () => dispatch.wake(),
    syncCache: async () => {
      const client = listening;
      if (!client) return false;
      // Notifications are delivered before the answer to any query on their connection.
      return client.query("SELECT 1").then(() => listening === client, () => false);
    },
  });

  // One LISTEN connection for both channels. While it is down the fan-out does not use its
  // cache and the dispatcher polls; it is re-established after a second.
  let stopped = false;
  let relisten: NodeJS.Timeout | undefined;
  const released = new WeakSet<PoolClient>();
  const releaseOnce = (client: PoolClient, error?: Error) => {
    if (released.has(client)) return;
    released.add(client);
    if (listening === client) listening = undefined;
    client.release(error);
  };
  const listenAgain = () => {
    if (!stopped && !relisten) relisten = setTimeout(() => void listen(), 1_000);
  };
  async function listen(): Promise<void> {
    relisten = undefined;
    let client: PoolClient | undefined;
    try {
      client = await db.connect();
      const current = client;
      current.on("notification", (n) => {
        if (n.channel === webhooksChangedChannel) fanout.invalidate(n.payload || undefined);
        dispatch.wake();
      });
      current.on("error", (error: Error) => {
        log.warn({ err: error }, "webhooks delivery lost its LISTEN connection; polling until it listens again");
        fanout.invalidate();
        releaseOnce(current, error);
        listenAgain();
      });
      await current.query(`LISTEN ${deliveriesDueChannel}; LISTEN ${webhooksChangedChannel}`);
      if (stopped) return releaseOnce(current);
      // Changes made before the LISTEN took effect were not heard: start from an empty cache.
      fanout.invalidate();
      listening = current;
    } catch (error) {
      log.warn({ err: error }, "webhooks delivery cannot LISTEN; polling only");
      if (client) releaseOnce(client, error as Error);
      listenAgain();
    }
  }
  const listenedOnce = listen();
  await listenedOnce;

  return {
    async stop() {
      stopped = true;
      clearTimeout(relisten);
      await fanout.stop();
      await dispatch.stop();
      await listenedOnce;
      const client = listening;
      if (client) {
        await client.query(`UNLISTEN *`).catch(() => {});
        releaseOnce(client);
      }
      await dispatcher.close().catch(() => {});
    },
  };
}

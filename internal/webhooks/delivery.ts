/**
 * The delivery engine of a webhooks process: the fan-out (events stream → delivery rows) and the
 * dispatcher (delivery rows → signed HTTP attempts), sharing one LISTEN connection for their
 * wake-ups and one guarded undici dispatcher for their connections. Every webhooks process runs
 * one; several share the work (the stream's durable consumer, SKIP LOCKED claims and leases).
 * The bus must be provisioned (internal/bus/topology.ts: the events stream and the fan-out's
 * durable consumer).
 */
import type { JetStreamClient } from "@nats-io/jetstream";
import type { Topology } from "../bus/topology.ts";
import type { AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import type { WebhooksConfig } from "../config/index.ts";
import type { Pool } from "../db/index.ts";
import { listenChannels, type ChannelListener } from "../db/listener.ts";
import { createGuardedDispatcher, type NetPolicy } from "../netpolicy/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { startDispatcher } from "./dispatcher.ts";
import { startFanout } from "./fanout.ts";
import { firstAttemptDelayMs } from "./schedule.ts";
import { deliveriesDueChannel, webhooksChangedChannel } from "./subscriptions.ts";

/** How long the fan-out's sync round trip on the LISTEN connection may take before it is dropped. */
const syncTimeoutMs = 2_000;

export interface WebhookDeliveryDeps {
  db: Pool;
  js: JetStreamClient;
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
  /** The dispatcher's poll behind its wake-ups (default 500 ms); tests lengthen it to show what the wake-ups do alone. */
  pollMs?: number;
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

  // Assigned once the fan-out exists (its callbacks use the fan-out); read only after that.
  let listener: ChannelListener | undefined;
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
    pollMs: deps.pollMs,
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
    hotPath: dispatch,
    // One round trip on the LISTEN connection applies every change committed before it. It is
    // time-boxed: on a half-open connection it would block the fan-out for the kernel's ~15 min;
    // instead that connection is dropped (the fan-out skips its cache) and a new one listens.
    syncCache: () => listener?.ping(syncTimeoutMs) ?? Promise.resolve(false),
  });

  // One LISTEN connection for both channels. While it is down the fan-out does not use its
  // cache and the dispatcher polls; it is re-established after a second.
  const listening = listenChannels(db, [deliveriesDueChannel, webhooksChangedChannel], {
    log,
    name: "webhooks delivery",
    onNotification: (channel, payload) => {
      if (channel === webhooksChangedChannel) fanout.invalidate(payload);
      dispatch.wake();
    },
    onLost: () => fanout.invalidate(),
    // Changes made before the LISTEN took effect were not heard: start from an empty cache.
    onListening: () => fanout.invalidate(),
  });
  listener = listening;
  await listening.started;

  return {
    async stop() {
      await fanout.stop();
      await dispatch.stop();
      await listening.stop();
      await dispatcher.close().catch(() => {});
    },
  };
}

/**
 * NATS and JetStream: the connection, idempotent stream provisioning and trace context in
 * message headers (so a job's trace continues across the bus).
 */
import { connect, headers, type MsgHdrs, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager, type StreamConfig } from "@nats-io/jetstream";
import { context, propagation, type Context } from "@opentelemetry/api";
import type { Logger } from "../telemetry/index.ts";
import { createStreamPublisher, type StreamPublisher } from "./publisher.ts";

export type { StreamPublisher } from "./publisher.ts";

export interface Bus {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  /** JetStream publishes acknowledged on one shared subscription (publisher.ts): the hot path's. */
  streams: StreamPublisher;
  /** Resolves when the server answers a round trip; the readiness check. */
  ping(): Promise<void>;
  /** Drains subscriptions and closes the connection. */
  close(): Promise<void>;
}

export async function connectBus(options: { url: string; name: string; log: Logger }): Promise<Bus> {
  const nc = await connect({
    servers: options.url,
    name: options.name,
    // Keep reconnecting for as long as the process lives: NATS restarts must not need ours.
    maxReconnectAttempts: -1,
    // Without it every request (each JetStream publish) builds two Error objects for their stack
    // traces up front: a large share of a publisher's CPU.
    noAsyncTraces: true,
    reconnectTimeWait: 250,
  });
  void (async () => {
    for await (const status of nc.status()) {
      if (status.type === "disconnect" || status.type === "reconnect") options.log.warn({ nats: status.type }, "nats connection status");
    }
  })();
  const jsm = await jetstreamManager(nc);
  const streams = createStreamPublisher(nc);
  return {
    nc,
    js: jetstream(nc),
    jsm,
    streams,
    async ping() {
      if (nc.isClosed()) throw new Error("nats connection closed");
      await nc.flush();
    },
    async close() {
      streams.close();
      if (!nc.isClosed()) await nc.drain();
    },
  };
}

/** Creates the stream, or updates it to this configuration when it exists. */
export async function ensureStream(jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }): Promise<void> {
  try {
    await jsm.streams.info(config.name);
  } catch {
    await jsm.streams.add(config);
    return;
  }
  await jsm.streams.update(config.name, config);
}

const headerSetter = { set: (h: MsgHdrs, key: string, value: string) => h.set(key, value) };
const headerGetter = {
  keys: (h: MsgHdrs) => h.keys(),
  get: (h: MsgHdrs, key: string) => h.get(key) || undefined,
};

/** Message headers carrying the active trace context (`traceparent`). */
export function tracedHeaders(ctx: Context = context.active()): MsgHdrs {
  const h = headers();
  propagation.inject(ctx, h, headerSetter);
  return h;
}

/** The trace context a message carries, to parent the consumer's span. */
export function traceContextOf(h: MsgHdrs | undefined): Context {
  return h ? propagation.extract(context.active(), h, headerGetter) : context.active();
}

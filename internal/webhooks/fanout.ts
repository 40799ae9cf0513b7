/**
 * The fan-out: a durable JetStream consumer ("webhooks_fanout", provisioned with the rest of the
 * bus by internal/bus/topology.ts) on the events stream turns each
 * JobEvent into one delivery row per matching ACTIVE subscription of its tenant. A batch of
 * events becomes one INSERT … ON CONFLICT (webhook_id, event_id) DO NOTHING (claim.ts's
 * insertDeliveries), and only then are its messages acknowledged: a crash in between redelivers
 * them and the conflict clause drops what was already inserted. At least once from the stream,
 * exactly one row per (event, subscription). Rows due at once are leased by that same insert, as
 * far as this process's dispatcher has room, and handed to it to send (the hot path: event →
 * first attempt without a claim round trip); the rest wake the claimers with NOTIFY.
 *
 * Subscriptions are cached per tenant. The cache is invalidated by the NOTIFY webhooks_changed
 * (tenant id as payload) that every writer of `webhooks` sends. A notification arrives a little
 * after its commit, so before each batch uses the cache, one round trip on the LISTEN connection
 * (syncCache) makes sure every notification committed before the batch has been applied: a
 * subscription committed before an event is fanned out always gets it. While the LISTEN
 * connection is down the cache is not used; entries also expire after cacheTtlMs.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { JetStreamClient, JsMsg } from "@nats-io/jetstream";
import { JobEventSchema, type JobEvent } from "../../gen/jobmesh/v1/events_pb.js";
import { runDurableConsumer } from "../bus/consumer-loop.ts";
import { insertDeliveries, type NewDeliveries } from "./claim.ts";
import type { HotPath } from "./dispatcher.ts";
import type { Pool } from "../db/index.ts";
import type { Logger } from "../telemetry/index.ts";

/** How long a tenant's cached subscriptions are trusted without a notification. */
export const cacheTtlMs = 10_000;
const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** What the fan-out needs of a subscription to match an event. */
export interface SubscriptionMatch {
  id: string;
  tenantId: string;
  /** JobEventType numbers; empty = every type. */
  eventTypes: number[];
  /** "pipelines/{id}", or "" for any. */
  filterPipeline: string;
  filterJobLabels: Record<string, string>;
  /** Events that happened before the subscription existed are not delivered to it. */
  createTimeMs: number;
}

/** True when `event` is for `sub`: its type, pipeline and labels match, and it is not older than the subscription. */
export function matchesEvent(sub: SubscriptionMatch, event: JobEvent): boolean {
  if (sub.eventTypes.length > 0 && !sub.eventTypes.includes(event.type)) return false;
  if (sub.filterPipeline !== "" && sub.filterPipeline !== event.pipeline) return false;
  for (const [key, value] of Object.entries(sub.filterJobLabels)) {
    if (event.labels[key] !== value) return false;
  }
  const eventMs = event.eventTime ? timestampMs(event.eventTime) : Date.now();
  return eventMs >= sub.createTimeMs;
}

export interface FanoutDeps {
  db: Pool;
  js: JetStreamClient;
  eventsStream: string;
  /** The durable consumer (internal/bus/topology.ts provisions it). */
  consumer: string;
  log: Logger;
  /** Delay before the first attempt (the schedule's first entry). */
  firstDelayMs: number;
  /** The channel the dispatcher LISTENs on; NOTIFYed when rows were inserted. */
  dueChannel: string;
  /** Called after rows were inserted that were not leased here: wakes this process's dispatcher without the NOTIFY's detour. */
  onInserted?: () => void;
  /** This process's dispatcher, for the hot path: rows due at once are leased by the insert and sent without a claim. */
  hotPath?: HotPath;
  /**
   * Resolves true once every webhooks_changed notification committed so far has been applied (a
   * round trip on the LISTEN connection), false when there is no LISTEN connection (then the
   * cache is not used).
   */
  syncCache: () => Promise<boolean>;
  batchSize?: number;
}

export interface Fanout {
  /** Drops a tenant's cached subscriptions (a webhooks_changed notification); no tenant drops all. */
  invalidate(tenantId?: string): void;
  stop(): Promise<void>;
}

interface SubscriptionRow {
  id: string;
  tenant_id: string;
  event_types: number[];
  filter_pipeline: string;
  filter_job_labels: Record<string, string>;
  create_time: Date;
}

/** The fan-out's per-tenant subscription cache. */
export interface SubscriptionCache {
  /** Every given tenant's ACTIVE subscriptions, from the cache where it is usable, else loaded (and cached). */
  get(tenants: string[]): Promise<Map<string, SubscriptionMatch[]>>;
  /** Drops a tenant's entry; no tenant drops all. */
  invalidate(tenantId?: string): void;
}

/**
 * A cache over `load` (which answers every tenant it is asked for). A load's snapshot may predate
 * a change whose invalidation arrived while it ran (and found nothing to drop): generations, a
 * global one and one per tenant bumped by invalidate, are read before the load, and its result
 * is cached only for tenants whose generation did not move.
 */
export function createSubscriptionCache(load: (tenants: string[]) => Promise<Map<string, SubscriptionMatch[]>>, syncCache: () => Promise<boolean>): SubscriptionCache {
  const cache = new Map<string, { subs: SubscriptionMatch[]; loadedAt: number }>();
  const generations = new Map<string, number>();
  let allGeneration = 0;
  const generationOf = (tenant: string) => `${allGeneration}/${generations.get(tenant) ?? 0}`;
  return {
    async get(tenants) {
      const usable = cache.size > 0 && (await syncCache());
      const now = Date.now();
      const found = new Map<string, SubscriptionMatch[]>();
      const missing: string[] = [];
      for (const tenant of tenants) {
        const hit = usable ? cache.get(tenant) : undefined;
        if (hit && now - hit.loadedAt < cacheTtlMs) found.set(tenant, hit.subs);
        else missing.push(tenant);
      }
      if (missing.length === 0) return found;
      const before = missing.map(generationOf);
      const loaded = await load(missing);
      missing.forEach((tenant, i) => {
        const subs = loaded.get(tenant) ?? [];
        found.set(tenant, subs);
        if (generationOf(tenant) === before[i]) cache.set(tenant, { subs, loadedAt: now });
      });
      return found;
    },
    invalidate(tenantId) {
      if (tenantId) {
        const tenant = tenantId.toLowerCase();
        cache.delete(tenant);
        generations.set(tenant, (generations.get(tenant) ?? 0) + 1);
      } else {
        cache.clear();
        allGeneration++;
      }
    },
  };
}

/** Starts reading the events stream; resolves once the consumer is open. */
export async function startFanout(deps: FanoutDeps): Promise<Fanout> {
  const { db, log } = deps;
  const batchSize = deps.batchSize ?? 500;

  async function loadSubscriptions(missing: string[]): Promise<Map<string, SubscriptionMatch[]>> {
    const found = new Map<string, SubscriptionMatch[]>();
    const { rows } = await db.query<SubscriptionRow>(
      `SELECT id, tenant_id, event_types, filter_pipeline, filter_job_labels, create_time
       FROM webhooks WHERE tenant_id = ANY($1::uuid[]) AND state = 1`,
      [missing],
    );
    for (const tenant of missing) found.set(tenant, []);
    for (const row of rows) {
      found.get(row.tenant_id)!.push({
        id: row.id,
        tenantId: row.tenant_id,
        eventTypes: row.event_types,
        filterPipeline: row.filter_pipeline,
        filterJobLabels: row.filter_job_labels,
        createTimeMs: row.create_time.getTime(),
      });
    }
    return found;
  }
  const cache = createSubscriptionCache(loadSubscriptions, deps.syncCache);

  /** Matches a batch's events against the cached subscriptions and inserts their deliveries (leasing what it may send at once). */
  async function fanOut(events: JobEvent[], payloads: Uint8Array[]): Promise<void> {
    const tenants = [...new Set(events.map((e) => e.tenant.toLowerCase()).filter((t) => uuidPattern.test(t)))];
    if (tenants.length === 0) return;
    const subs = await cache.get(tenants);
    const rows: NewDeliveries = { tenant: [], webhook: [], eventId: [], type: [], job: [], event: [] };
    events.forEach((event, i) => {
      for (const sub of subs.get(event.tenant.toLowerCase()) ?? []) {
        if (!event.eventId || !matchesEvent(sub, event)) continue;
        rows.tenant.push(sub.tenantId);
        rows.webhook.push(sub.id);
        rows.eventId.push(event.eventId);
        rows.type.push(event.type);
        rows.job.push(event.job);
        rows.event.push(Buffer.from(payloads[i]));
      }
    });
    if (rows.webhook.length === 0) return;
    const hot = deps.firstDelayMs === 0 ? deps.hotPath?.reserve(rows.webhook.length) : undefined;
    try {
      const result = await insertDeliveries(db, rows, {
        firstDelayMs: deps.firstDelayMs, dueChannel: deps.dueChannel, lease: hot?.limits, onLeased: (leased, committed) => hot?.adopt(leased, committed),
      });
      if (result.inserted > result.leased) deps.onInserted?.();
    } finally {
      hot?.release();
    }
  }

  /** Decodes a batch (an undecodable message is terminated) and inserts its deliveries; the loop acks after. */
  async function handle(batch: JsMsg[]): Promise<void> {
    const events: JobEvent[] = [];
    const payloads: Uint8Array[] = [];
    for (const msg of batch) {
      try {
        events.push(fromBinary(JobEventSchema, msg.data));
        payloads.push(msg.data);
      } catch (error) {
        // Not a JobEvent: it can never be delivered, and must not hold back the ones behind it.
        log.error({ err: error, stream_sequence: msg.seq }, "webhooks fan-out: message is not a JobEvent; dropped");
        msg.term();
      }
    }
    await fanOut(events, payloads);
  }

  // The shared loop acks a batch once handle resolved and naks it with a growing delay when it
  // failed (a Postgres outage does not spin); stop stores the batch in hand, gives back the rest.
  const stopping = new AbortController();
  let opened!: () => void;
  const open = new Promise<void>((resolve) => (opened = resolve));
  // Batches commute (one row per event and subscription, whatever the order): two at once, so a
  // batch need not wait for the previous one's WAL flush.
  const loop = runDurableConsumer({ js: deps.js, stream: deps.eventsStream, consumer: deps.consumer, maxMessages: batchSize, concurrency: 2, handle, log, signal: stopping.signal, onOpen: opened });
  await Promise.race([open, loop]);

  return {
    invalidate: cache.invalidate,
    async stop() {
      stopping.abort();
      await loop;
    },
  };
}

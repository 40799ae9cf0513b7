/**
 * The dispatcher's claim: one statement (one round trip, its own transaction) that locks the
 * ACTIVE subscriptions with due work (FOR NO KEY UPDATE SKIP LOCKED: one claimer per subscription
 * at a time, so its in-flight count cannot be raced), counts their deliveries in flight across
 * every webhooks process, and leases at most this many due deliveries of each:
 * - its free concurrency (max_concurrency minus in flight everywhere) and its rate tokens;
 * - its fair share of this process: min(max_concurrency, max(1, floor(maxInFlight / (subscriptions
 *   with due work + 1)))) minus what it has in flight here. The + 1 keeps room for a subscription
 *   whose work arrives next: subscriptions whose receivers never answer hold their share until
 *   the timeout, and without it they could together hold the whole budget;
 * - its tenant's share: max(1, floor(maxInFlight / tenants with due work)) minus what the tenant
 *   has in flight here, split among its subscriptions;
 * and never more than the round's budget in all (a running sum in random order, so no
 * subscription is always last).
 */
import type { Pool } from "../db/index.ts";

/** Defaults of a subscription that left its limits at 0 (the contract's). */
export const defaultMaxConcurrency = 10;
export const defaultMaxRatePerSecond = 50;

/** A leased delivery with what sending it needs of its subscription. */
export interface ClaimedRow {
  id: string;
  webhook_id: string;
  event_id: string;
  event: Buffer;
  attempt_count: number;
  replay_pending: boolean;
  lease: string;
  tenant_id: string;
  url: string;
  max_rate_per_second: number;
  secret_sealed: Buffer;
  previous_secret_sealed: Buffer | null;
  previous_secret_expire_time: Date | null;
}

export interface ClaimLimits {
  /** What this process may still start now (maxInFlight minus its sends in flight). */
  budget: number;
  /** This process's whole budget (maxInFlight). */
  maxInFlight: number;
  leaseMs: number;
  /** Rate tokens of the subscriptions this process knows (the others have a full bucket). */
  tokens: Map<string, number>;
  /** This process's sends in flight per subscription and per tenant. */
  localBySubscription: Map<string, number>;
  localByTenant: Map<string, number>;
}

/** Leases due deliveries within every limit; resolves the claimed rows. */
export async function claimDue(db: Pool, limits: ClaimLimits): Promise<ClaimedRow[]> {
  const { rows } = await db.query<ClaimedRow>(
    `WITH candidates AS (
       SELECT w.id, w.tenant_id, w.url, w.max_rate_per_second, w.secret_sealed, w.previous_secret_sealed, w.previous_secret_expire_time,
              coalesce(nullif(w.max_concurrency, 0), $1) AS concurrency, coalesce(ls.local, 0) AS local,
              least(coalesce(nullif(w.max_concurrency, 0), $1) - p.in_flight,
                    coalesce(t.tokens, coalesce(nullif(w.max_rate_per_second, 0), $2))) AS n
       FROM (
         -- Due rows include the leased ones (claimed when due): in flight is counted among them.
         SELECT webhook_id,
                count(*) FILTER (WHERE lease_until > now()) AS in_flight,
                count(*) FILTER (WHERE lease_until IS NULL OR lease_until <= now()) AS ready
         FROM webhook_deliveries WHERE status = 1 AND next_attempt_time <= now()
         GROUP BY webhook_id
       ) p
       JOIN webhooks w ON w.id = p.webhook_id
       LEFT JOIN unnest($3::uuid[], $4::int[]) AS t (webhook_id, tokens) ON t.webhook_id = w.id
       LEFT JOIN unnest($8::uuid[], $9::int[]) AS ls (webhook_id, local) ON ls.webhook_id = w.id
       -- A lease lost with a Postgres crash only means the delivery is claimed again: this
       -- commit need not wait for the WAL flush (the fan-out's inserts, which ack the stream, do).
       WHERE p.ready > 0 AND w.state = 1 AND set_config('synchronous_commit', 'off', true) IS NOT NULL
       FOR NO KEY UPDATE OF w SKIP LOCKED
     ), counts AS (
       SELECT count(*) AS subscriptions, count(DISTINCT tenant_id) AS tenants FROM candidates
     ), fair AS (
       SELECT c.id, c.tenant_id, random() AS r,
              greatest(0, least(c.n, least(c.concurrency, greatest(1, floor($7::numeric / (k.subscriptions + 1)))) - c.local))::int AS n,
              greatest(0, greatest(1, floor($7::numeric / k.tenants)) - coalesce(lt.local, 0))::int AS tenant_room
       FROM candidates c CROSS JOIN counts k
       LEFT JOIN unnest($10::uuid[], $11::int[]) AS lt (tenant_id, local) ON lt.tenant_id = c.tenant_id
     ), per_tenant AS (
       SELECT id, r, least(n, greatest(0, tenant_room - (sum(n) OVER (PARTITION BY tenant_id ORDER BY r ROWS UNBOUNDED PRECEDING) - n)))::int AS n
       FROM fair
     ), shares AS (
       SELECT id, least(n, greatest(0, $5::int - (sum(n) OVER (ORDER BY r ROWS UNBOUNDED PRECEDING) - n)))::int AS n
       FROM per_tenant
     ), claimed AS (
       UPDATE webhook_deliveries d SET lease_until = now() + $6::int * interval '1 millisecond'
       FROM (
         SELECT x.id FROM shares s
         CROSS JOIN LATERAL (
           SELECT id FROM webhook_deliveries
           WHERE webhook_id = s.id AND status = 1 AND next_attempt_time <= now()
             AND (lease_until IS NULL OR lease_until <= now())
           ORDER BY next_attempt_time LIMIT s.n FOR UPDATE SKIP LOCKED
         ) x
         WHERE s.n > 0
       ) c
       WHERE d.id = c.id
       RETURNING d.id, d.webhook_id, d.event_id, d.event, d.attempt_count, d.replay_pending, d.lease_until::text AS lease
     )
     SELECT c.*, w.tenant_id, w.url, w.max_rate_per_second, w.secret_sealed, w.previous_secret_sealed, w.previous_secret_expire_time
     FROM claimed c JOIN candidates w ON w.id = c.webhook_id`,
    [
      defaultMaxConcurrency, defaultMaxRatePerSecond, [...limits.tokens.keys()], [...limits.tokens.values()], limits.budget, limits.leaseMs,
      limits.maxInFlight, [...limits.localBySubscription.keys()], [...limits.localBySubscription.values()],
      [...limits.localByTenant.keys()], [...limits.localByTenant.values()],
    ],
  );
  return rows;
}

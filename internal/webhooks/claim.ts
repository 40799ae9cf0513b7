/**
 * The dispatcher's claim: a transaction that locks the ACTIVE subscriptions with due work (FOR NO
 * KEY UPDATE SKIP LOCKED: one claimer per subscription at a time), then, in a second statement
 * whose snapshot sees every lease committed by those who held them before, counts their
 * deliveries in flight across every webhooks process, and leases at most this many due
 * deliveries of each:
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
import { inTransaction, type Pool, type Queryable } from "../db/index.ts";

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
  /** This process's sends in flight per subscription and per tenant. */
  localBySubscription: Map<string, number>;
  localByTenant: Map<string, number>;
}

/**
 * The tokens of a subscription's rate bucket now (SQL, for the webhooks row `w`): what was left at
 * the last claim plus what refilled since, at most one second's worth. The bucket lives in the row
 * (rate_tokens, rate_refill_time), so every webhooks process draws on the same one; only claims
 * change it, and they hold the row locked.
 */
const availableTokensSql = (w: string, defaultRate: string) => {
  const rate = `coalesce(nullif(${w}.max_rate_per_second, 0), ${defaultRate})::float8`;
  return `least(${rate}, coalesce(${w}.rate_tokens, ${rate}) + extract(epoch FROM now() - coalesce(${w}.rate_refill_time, now()))::float8 * ${rate})`;
};

/** What a claim took, and whether due rows it could not take are left (a limit, another claimer). */
export interface ClaimResult {
  rows: ClaimedRow[];
  /** Due rows left unclaimed: of a subscription at its concurrency or rate limit, or held by another claimer. */
  readyLeft: boolean;
}

/** Leases due deliveries within every limit. */
export async function claimDue(db: Pool, limits: ClaimLimits): Promise<ClaimResult> {
  return inTransaction(db, async (tx) => {
    // A lease lost with a Postgres crash only means the delivery is claimed again: this commit
    // need not wait for the WAL flush (the fan-out's inserts, which ack the stream, do).
    // One row always: the subscriptions locked, and how many have due rows ready in all.
    const { rows } = await tx.query<{ locked: string[] | null; ready: number }>({
      name: "webhooks-lock-for-claim",
      text: `WITH async_commit AS (
               SELECT set_config('synchronous_commit', 'off', true)
             ), ready AS (
               SELECT DISTINCT d.webhook_id FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id AND w.state = 1
               WHERE d.status = 1 AND d.next_attempt_time <= now() AND (d.lease_until IS NULL OR d.lease_until <= now())
             ), locked AS (
               SELECT w.id FROM webhooks w, async_commit
               WHERE w.id IN (SELECT webhook_id FROM ready) AND w.state = 1
               FOR NO KEY UPDATE OF w SKIP LOCKED
             )
             SELECT (SELECT array_agg(id) FROM locked) AS locked, (SELECT count(*) FROM ready)::int AS ready`,
    });
    const locked = rows[0].locked ?? [];
    if (locked.length === 0) return { rows: [], readyLeft: rows[0].ready > 0 };
    const leased = await leaseDue(tx, limits, locked);
    return { rows: leased.rows, readyLeft: rows[0].ready > locked.length || leased.readyTotal > leased.rows.length };
  });
}

/** The claim's second statement, over the subscriptions it locked; also counts their ready rows. */
async function leaseDue(db: Queryable, limits: ClaimLimits, locked: string[]): Promise<{ rows: ClaimedRow[]; readyTotal: number }> {
  // Named: prepared once per connection (planning it costs more than running it).
  const { rows } = await db.query<Partial<ClaimedRow> & { ready_total: number }>({
    name: "webhooks-claim-due",
    text: `WITH candidates AS (
       SELECT w.id, w.tenant_id, w.url, w.secret_sealed, w.previous_secret_sealed, w.previous_secret_expire_time,
              coalesce(nullif(w.max_concurrency, 0), $1) AS concurrency, coalesce(ls.local, 0) AS local, p.ready,
              ${availableTokensSql("w", "$2")} AS available,
              least(coalesce(nullif(w.max_concurrency, 0), $1) - p.in_flight, floor(${availableTokensSql("w", "$2")})) AS n
       FROM (
         -- Due rows include the leased ones (claimed when due): in flight is counted among them.
         SELECT webhook_id,
                count(*) FILTER (WHERE lease_until > now()) AS in_flight,
                count(*) FILTER (WHERE lease_until IS NULL OR lease_until <= now()) AS ready
         FROM webhook_deliveries WHERE status = 1 AND next_attempt_time <= now() AND webhook_id = ANY($10::uuid[])
         GROUP BY webhook_id
       ) p
       JOIN webhooks w ON w.id = p.webhook_id
       LEFT JOIN unnest($6::uuid[], $7::int[]) AS ls (webhook_id, local) ON ls.webhook_id = w.id
       WHERE p.ready > 0 AND w.state = 1
     ), counts AS (
       SELECT count(*) AS subscriptions, count(DISTINCT tenant_id) AS tenants FROM candidates
     ), fair AS (
       SELECT c.id, c.tenant_id, random() AS r,
              greatest(0, least(c.n, least(c.concurrency, greatest(1, floor($5::numeric / (k.subscriptions + 1)))) - c.local))::int AS n,
              greatest(0, greatest(1, floor($5::numeric / k.tenants)) - coalesce(lt.local, 0))::int AS tenant_room
       FROM candidates c CROSS JOIN counts k
       LEFT JOIN unnest($8::uuid[], $9::int[]) AS lt (tenant_id, local) ON lt.tenant_id = c.tenant_id
     ), per_tenant AS (
       SELECT id, r, least(n, greatest(0, tenant_room - (sum(n) OVER (PARTITION BY tenant_id ORDER BY r ROWS UNBOUNDED PRECEDING) - n)))::int AS n
       FROM fair
     ), shares AS (
       SELECT id, least(n, greatest(0, $3::int - (sum(n) OVER (ORDER BY r ROWS UNBOUNDED PRECEDING) - n)))::int AS n
       FROM per_tenant
     ), claimed AS (
       UPDATE webhook_deliveries d SET lease_until = now() + $4::int * interval '1 millisecond'
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
     ), spent AS (
       -- The rate bucket, in the row every process claims through: what was left, less what was taken now.
       UPDATE webhooks w SET rate_tokens = c.available - x.n, rate_refill_time = now()
       FROM (SELECT webhook_id, count(*) AS n FROM claimed GROUP BY webhook_id) x JOIN candidates c ON c.id = x.webhook_id
       WHERE w.id = x.webhook_id
     )
     -- One row always, for the count of ready rows.
     SELECT h.*, (SELECT coalesce(sum(ready), 0) FROM candidates)::int AS ready_total
     FROM (SELECT 1) one LEFT JOIN (
       SELECT c.*, w.tenant_id, w.url, w.secret_sealed, w.previous_secret_sealed, w.previous_secret_expire_time
       FROM claimed c JOIN candidates w ON w.id = c.webhook_id
     ) h ON true`,
    values: [
      defaultMaxConcurrency, defaultMaxRatePerSecond, limits.budget, limits.leaseMs,
      limits.maxInFlight, [...limits.localBySubscription.keys()], [...limits.localBySubscription.values()],
      [...limits.localByTenant.keys()], [...limits.localByTenant.values()], locked,
    ],
  });
  return { rows: rows.filter((r) => r.id != null) as ClaimedRow[], readyTotal: rows[0].ready_total };
}

/** A batch's deliveries, one entry per (event, matching subscription), as parallel columns. */
export interface NewDeliveries {
  tenant: string[];
  webhook: string[];
  eventId: string[];
  type: number[];
  job: string[];
  event: Buffer[];
}

export interface InsertOptions {
  /** Delay before the first attempt (the schedule's first entry). */
  firstDelayMs: number;
  /** The channel NOTIFYed (at commit) when rows were inserted that this process did not lease. */
  dueChannel: string;
  /**
   * When given (and the first attempt is due at once), the insert also leases what this process
   * may send now, as a claim would: within each subscription's free concurrency (across every
   * process), its rate tokens and its fair share of this process, and the budget in all.
   */
  lease?: ClaimLimits;
  /**
   * Given the leased rows before the commit, with a promise of it: their sends may start at once,
   * but their outcomes may be recorded only once it resolved (when it rejects, the rows do not
   * exist, and the event comes again from the stream).
   */
  onLeased?: (rows: ClaimedRow[], committed: Promise<void>) => void;
}

export interface Inserted {
  /** How many rows were new (a redelivered event's rows already exist). */
  inserted: number;
  /** How many of them were leased to this process (and given to onLeased). */
  leased: number;
}

/**
 * Inserts a batch's deliveries in one statement (one round trip): INSERT … ON CONFLICT
 * (webhook_id, event_id) DO NOTHING, so a redelivered batch adds nothing. Rows of subscriptions
 * no longer ACTIVE are dropped (the fan-out's cache may be a moment behind). The rows' subscriptions
 * are held FOR KEY SHARE, which only FOR UPDATE waits for and makes wait: a delete, and an
 * automatic disable (outcomes.ts), which fails the subscription's pending rows: it waits for this
 * insert to commit and fails its rows too, or this insert waits for it and skips the subscription.
 *
 * The hot path: rows due at once are inserted already leased to this process, up to what a claim
 * would give it, and returned with what sending needs, so the first attempt starts without a
 * claim round trip (which would cost as much again as this insert). The subscriptions are locked
 * for it first, as a claim locks them (FOR NO KEY UPDATE, so their in-flight count is not raced;
 * waiting the few milliseconds another holder takes). Rows not leased (no room, no tokens) wake
 * the claimers with a NOTIFY at commit.
 *
 * Leased rows are handed over before the commit, whose WAL flush would otherwise be on the path to
 * the first attempt: a send is at least once anyway, and its outcome waits for the commit. Until
 * then the rows are invisible, but their subscriptions are locked, so no claimer counts them short.
 */
export async function insertDeliveries(db: Pool, rows: NewDeliveries, options: InsertOptions): Promise<Inserted> {
  const lease = options.firstDelayMs === 0 && options.lease && options.lease.budget > 0 ? options.lease : undefined;
  if (!lease) return { inserted: (await insertStatement(db, rows, options, undefined)).inserted, leased: 0 };
  const committed = Promise.withResolvers<void>();
  committed.promise.catch(() => {}); // observed by onLeased's taker, when there is one
  try {
    const inserted = await inTransaction(db, async (tx) => {
      // Locked in a statement of its own: the insert's snapshot, taken after, sees every lease
      // committed by those who held them before (one statement's snapshot could predate them).
      // Waited for, not skipped: a claim or another fan-out batch holds a subscription for a few
      // milliseconds, and skipping it would send its new rows the slow way (NOTIFY, then a
      // claim), which holds it again. Taken in id order, as every multi-row lock on webhooks is;
      // claims never wait (SKIP LOCKED).
      const { rows: locked } = await tx.query<{ id: string }>({
        name: "webhooks-lock-for-hot-lease",
        text: "SELECT id FROM webhooks WHERE id = ANY($1::uuid[]) AND state = 1 ORDER BY id FOR NO KEY UPDATE",
        values: [[...new Set(rows.webhook)]],
      });
      const result = await insertStatement(tx, rows, options, { limits: lease, locked: locked.map((r) => r.id) });
      if (result.leased.length > 0) options.onLeased?.(result.leased, committed.promise);
      return { inserted: result.inserted, leased: result.leased.length };
    });
    committed.resolve();
    return inserted;
  } catch (error) {
    committed.reject(error);
    throw error;
  }
}

/**
 * The insert; `lease` with `locked`, the subscriptions locked by this transaction for the hot path
 * (the others get no hot lease).
 */
async function insertStatement(db: Queryable, rows: NewDeliveries, options: InsertOptions, lease?: { limits: ClaimLimits; locked: string[] }): Promise<{ inserted: number; leased: ClaimedRow[] }> {
  // Named: prepared once per connection. Planning this statement costs more than running it.
  const { rows: result } = await db.query<Partial<ClaimedRow> & { inserted: number }>({
    name: "webhooks-insert-deliveries",
    text: `WITH x AS (
       SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::smallint[], $5::text[], $6::bytea[]) WITH ORDINALITY AS x (t, w, e, ty, j, ev, ord)
     ), active AS (
       SELECT wh.* FROM webhooks wh WHERE wh.id = ANY($2::uuid[]) AND wh.state = 1
       FOR KEY SHARE OF wh
     ), lockable AS (
       SELECT unnest($9::uuid[]) AS id
     ), room AS (
       SELECT a.id, ${availableTokensSql("a", "$11")} AS available, greatest(0, least(
                coalesce(nullif(a.max_concurrency, 0), $10) - (SELECT count(*) FROM webhook_deliveries d
                  WHERE d.webhook_id = a.id AND d.status = 1 AND d.lease_until > now() AND d.next_attempt_time <= now()),
                floor(${availableTokensSql("a", "$11")}),
                least(coalesce(nullif(a.max_concurrency, 0), $10), greatest(1, floor($12::numeric / ((SELECT count(*) FROM lockable) + 1))))
                  - coalesce(ls.local, 0)))::int AS n
       FROM active a JOIN lockable l ON l.id = a.id
       LEFT JOIN unnest($13::uuid[], $14::int[]) AS ls (webhook_id, local) ON ls.webhook_id = a.id
     ), numbered AS (
       SELECT x.*, coalesce(r.n, 0) AS room, row_number() OVER (PARTITION BY x.w ORDER BY x.ord) AS k
       FROM x JOIN active a ON a.id = x.w LEFT JOIN room r ON r.id = x.w
     ), ranked AS (
       -- Each subscription's first rows up to its room, taken round-robin across subscriptions up to the budget.
       SELECT *, k <= room AND row_number() OVER (ORDER BY k <= room DESC, k, ord) <= $15 AS leased FROM numbered
     ), inserted AS (
       INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_id, event_type, job, event, status, next_attempt_time, lease_until)
       SELECT t, w, e, ty, j, ev, 1, now() + $7::int * interval '1 millisecond',
              CASE WHEN leased THEN now() + $16::int * interval '1 millisecond' END
       FROM ranked
       ON CONFLICT (webhook_id, event_id) DO NOTHING
       RETURNING id, webhook_id, event_id, event, attempt_count, replay_pending, lease_until::text AS lease
     ), spent AS (
       -- The rate bucket, in the row every process claims through: what was left, less what was leased now.
       UPDATE webhooks w SET rate_tokens = r.available - x.n, rate_refill_time = now()
       FROM (SELECT webhook_id, count(*) AS n FROM inserted WHERE lease IS NOT NULL GROUP BY webhook_id) x JOIN room r ON r.id = x.webhook_id
       WHERE w.id = x.webhook_id
     ), woken AS (
       SELECT pg_notify($8, '') FROM (SELECT 1 FROM inserted WHERE lease IS NULL LIMIT 1) one
     )
     SELECT (SELECT count(*) FROM inserted)::int AS inserted, (SELECT count(*) FROM woken) AS woken, h.*
     FROM (SELECT 1) one LEFT JOIN (
       SELECT i.*, a.tenant_id, a.url, a.secret_sealed, a.previous_secret_sealed, a.previous_secret_expire_time
       FROM inserted i JOIN active a ON a.id = i.webhook_id WHERE i.lease IS NOT NULL
     ) h ON true`,
    values: [
      rows.tenant, rows.webhook, rows.eventId, rows.type, rows.job, rows.event, options.firstDelayMs, options.dueChannel,
      lease?.locked ?? [], defaultMaxConcurrency, defaultMaxRatePerSecond, lease?.limits.maxInFlight ?? 0,
      [...(lease?.limits.localBySubscription.keys() ?? [])], [...(lease?.limits.localBySubscription.values() ?? [])],
      lease?.limits.budget ?? 0, lease?.limits.leaseMs ?? 0,
    ],
  });
  return { inserted: result[0].inserted, leased: result.filter((r) => r.id != null) as ClaimedRow[] };
}

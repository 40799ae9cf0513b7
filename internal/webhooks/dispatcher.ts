/**
 * The dispatcher: claims due deliveries and sends them, within each subscription's limits.
 *
 * A claim round (claim.ts) locks the ACTIVE subscriptions that have due deliveries (FOR NO KEY
 * UPDATE SKIP LOCKED: one claimer per subscription at a time), then, in a statement whose snapshot
 * sees every lease committed before, counts how many of their deliveries are in flight (leased,
 * lease_until in the future: across every webhooks process), and takes at most
 * `max_concurrency - in flight` and the tokens of its rate bucket (kept in its row, so shared by
 * every process) from EACH subscription (a LATERAL LIMIT per webhook_id), so one subscription's
 * backlog never fills the batch, within fair shares of this process's budget per subscription
 * and per tenant. Claimed rows get lease_until; a process that dies mid-send leaves them leased,
 * and they come back when the lease runs out. Every outcome moves the delivery and inserts its
 * attempt in one transaction, fenced by the lease it was claimed with (a delivery reclaimed after
 * its lease expired is not moved twice).
 *
 * New deliveries due at once mostly skip the claim: the fan-out's insert leases them within the
 * same limits, in the budget this dispatcher reserves for it, and hands them over (HotPath). The
 * claim loop is woken by NOTIFY (rows the fan-out did not lease, replays) and by room freed in
 * this process while due rows may be waiting (mayHaveReady), with a poll behind them (as the
 * outbox relay, internal/outbox/relay.ts) for what becomes due by time: retries, refilled rate
 * buckets, leases that ran out.
 */
import type { Dispatcher } from "undici";
import type { AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import { WebhookAttemptOutcome, WebhookDisabledReason } from "../../gen/jobmesh/v1/webhooks_pb.js";
import { fromBinary } from "@bufbuild/protobuf";
import { JobEventSchema } from "../../gen/jobmesh/v1/events_pb.js";
import type { Pool } from "../db/index.ts";
import type { NetPolicy } from "../netpolicy/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { deliveryBody } from "./payload.ts";
import { signingSecretsOf } from "./secrets.ts";
import { sendAttempt, type AttemptResult } from "./send.ts";
import { recordFailure, recordSuccesses, type ClaimedDelivery } from "./outcomes.ts";
import { claimDue, defaultMaxRatePerSecond, defaultMaxConcurrency, type ClaimedRow, type ClaimLimits } from "./claim.ts";

export { defaultMaxConcurrency, defaultMaxRatePerSecond };

export interface DispatcherDeps {
  db: Pool;
  log: Logger;
  keyEncryptionKey: Buffer;
  dispatcher: Dispatcher;
  policy: NetPolicy;
  retryScheduleMs: readonly number[];
  timeoutMs: number;
  disableAfterMs: number;
  publicUrl: string;
  /** Where the audit event of an automatic disable goes. */
  record: (event: AuditEvent) => void;
  /** The channel that wakes the dispatcher; webhooks_changed is sent on disabling. */
  changedChannel: string;
  /** Deliveries in flight in this process at most (default 256). */
  maxInFlight?: number;
  /** Poll interval behind NOTIFY (default 500 ms). */
  pollMs?: number;
}

/**
 * The fan-out's way in (fanout.ts): reserve(wanted) sets aside up to `wanted` of this process's
 * free budget and gives the limits a claim would use now; the insert leases within them, adopt()
 * starts the leased rows (their outcomes recorded once `committed` resolved), and release() gives
 * the reservation back (always, once the insert is over).
 */
export interface HotPath {
  reserve(wanted: number): HotReservation | undefined;
}

export interface HotReservation {
  limits: ClaimLimits;
  adopt(rows: ClaimedRow[], committed: Promise<void>): void;
  release(): void;
}

export interface DeliveryDispatcher extends HotPath {
  /** A NOTIFY arrived: claim now. */
  wake(): void;
  /** Stops claiming and waits for the sends in flight to be recorded. */
  stop(): Promise<void>;
}


/** Starts the claim loop. */
export function startDispatcher(deps: DispatcherDeps): DeliveryDispatcher {
  const { db, log } = deps;
  const maxInFlight = deps.maxInFlight ?? 256;
  // Long enough for the send (bounded by the timeout) and its recording; a dead process's claims return after it.
  const leaseMs = deps.timeoutMs + 10_000;
  const sends = new Set<Promise<void>>();
  let inFlight = 0;
  // Budget set aside for a fan-out insert that may lease rows (the hot path): not claimed meanwhile.
  let reserved = 0;
  // This process's sends in flight per subscription and per tenant: the claim's fair shares.
  const localBySubscription = new Map<string, number>();
  const localByTenant = new Map<string, number>();
  const count = (map: Map<string, number>, key: string, by: number) => {
    const n = (map.get(key) ?? 0) + by;
    if (n > 0) map.set(key, n);
    else map.delete(key);
  };
  let stopped = false;
  let wakeLoop: (() => void) | undefined;
  let woken = false;
  /**
   * Whether due rows may be waiting unclaimed: set by every outside wake-up (NOTIFY, rows the
   * fan-out did not lease) and by a claim that left ready rows behind (a subscription at its
   * concurrency or rate limit, one another claimer held), cleared by a claim that left none.
   * Room freed in this process (a send ending, a hot-path reservation given back) wakes the loop
   * only while it is set: with the fan-out leasing new rows itself, a claim after every send
   * would find nothing, hundreds of times a second. Rows that become due by time (retries) and
   * leases that ran out are the poll's.
   */
  let mayHaveReady = true;
  const wake = () => {
    mayHaveReady = true;
    woken = true;
    wakeLoop?.();
  };
  /** Room freed since the current claim round began: when that round leaves ready rows behind, claim again at once. */
  let freedDuringRound = false;
  const roomFreed = () => {
    freedDuringRound = true;
    if (mayHaveReady) wake();
  };

  /** What a claim (or a hot-path insert) may lease now, `budget` of it. */
  function limits(budget: number): ClaimLimits {
    return { budget, maxInFlight, leaseMs, localBySubscription, localByTenant };
  }

  /**
   * One transaction (claim.ts): locks the subscriptions with due work, counts their deliveries in
   * flight, gives each the least of its free concurrency, its tokens and a fair share of this
   * process's budget, and leases that many of its due deliveries.
   */
  async function claimRound(budget: number): Promise<{ claimed: number; readyLeft: boolean }> {
    const { rows, readyLeft } = await claimDue(db, limits(budget));
    begin(rows);
    return { claimed: rows.length, readyLeft };
  }

  /**
   * Starts the sends of leased rows, their secrets unsealed once per subscription. Rows leased by
   * a transaction not yet committed (the hot path) have their outcomes recorded after it.
   */
  function begin(rows: ClaimedRow[], committed?: Promise<void>): void {
    const secrets = new Map<string, string[] | Error>();
    for (const row of rows) {
      let signing = secrets.get(row.webhook_id);
      if (!signing) {
        try {
          signing = signingSecretsOf(deps.keyEncryptionKey, { ...row, id: row.webhook_id });
        } catch (error) {
          // Its rows are leased already: each gets a failed attempt (retried on schedule), the
          // other rows of this round are still sent.
          log.error({ err: error, webhook: row.webhook_id }, "webhooks: a subscription's secret cannot be unsealed");
          signing = new Error("secret cannot be unsealed");
        }
        secrets.set(row.webhook_id, signing);
      }
      start(row, signing, committed);
    }
  }

  function start(row: ClaimedRow, secrets: string[] | Error, committed: Promise<void> | undefined): void {
    inFlight++;
    count(localBySubscription, row.webhook_id, 1);
    count(localByTenant, row.tenant_id, 1);
    const delivery: ClaimedDelivery = {
      id: row.id,
      webhookId: row.webhook_id,
      tenantId: row.tenant_id,
      lease: row.lease,
      attempt: row.attempt_count + 1,
      replay: row.replay_pending,
    };
    const send = (async () => {
      let result: AttemptResult;
      try {
        if (secrets instanceof Error) throw secrets;
        const body = deliveryBody(fromBinary(JobEventSchema, row.event), deps.publicUrl);
        result = await sendAttempt({ url: row.url, id: row.event_id, body, secrets }, deps);
      } catch (error) {
        // A stored event that no longer decodes, or a secret that cannot be unsealed: recorded as failed, retried on schedule.
        result = { outcome: WebhookAttemptOutcome.CONNECTION_ERROR, statusCode: 0, latencyUs: 0, responseExcerpt: "", errorMessage: `not sent: ${(error as Error).message}`, attemptTime: new Date() };
      }
      if (committed) {
        try {
          await committed;
        } catch {
          // Its row was never committed: nothing to record; the event comes again from the stream.
          log.warn({ delivery: delivery.id }, "webhooks: attempt sent for a delivery whose insert did not commit; it is sent again");
          return;
        }
      }
      await finish(delivery, result);
    })().finally(() => {
      inFlight--;
      count(localBySubscription, row.webhook_id, -1);
      count(localByTenant, row.tenant_id, -1);
      sends.delete(send);
      roomFreed();
    });
    sends.add(send);
  }

  // Successes are recorded in groups (one statement for all that finished meanwhile): the hot path.
  let successes: { delivery: ClaimedDelivery; result: AttemptResult; done: () => void }[] = [];
  let flushing: Promise<void> | undefined;
  function flushSuccesses(): Promise<void> {
    flushing ??= (async () => {
      while (successes.length > 0) {
        const group = successes;
        successes = [];
        try {
          const recorded = await recordSuccesses(db, group);
          if (recorded < group.length) {
            log.warn({ discarded: group.length - recorded }, "webhooks: successful attempts discarded, their lease had ended (they are sent again)");
          }
        } catch (error) {
          // Left leased: the lease runs out and they are sent again (at least once).
          log.error({ err: error, deliveries: group.length }, "webhooks: successful attempts not recorded");
        }
        for (const s of group) s.done();
      }
    })().finally(() => (flushing = undefined));
    return flushing;
  }

  async function finish(delivery: ClaimedDelivery, result: AttemptResult): Promise<void> {
    if (result.outcome === WebhookAttemptOutcome.SUCCEEDED) {
      await new Promise<void>((done) => {
        successes.push({ delivery, result, done });
        void flushSuccesses();
      });
      return;
    }
    try {
      const disabled = await recordFailure(db, delivery, result, deps);
      if (disabled) {
        log.warn({ webhook: delivery.webhookId, reason: WebhookDisabledReason[disabled.reason] }, "webhook subscription disabled");
        deps.record(disabled.auditEvent);
      }
    } catch (error) {
      log.error({ err: error, delivery: delivery.id }, "webhooks: failed attempt not recorded; the lease returns it");
    }
  }

  const loop = (async () => {
    let failures = 0;
    while (!stopped) {
      woken = false;
      let claimed = 0;
      const budget = maxInFlight - inFlight - reserved;
      if (budget > 0) {
        try {
          // Cleared before the round: a wake-up that arrives while it runs sets it again.
          mayHaveReady = false;
          freedDuringRound = false;
          const round = await claimRound(budget);
          claimed = round.claimed;
          if (round.readyLeft) {
            mayHaveReady = true;
            // A send that ended while the round ran freed room the round did not see.
            if (freedDuringRound) woken = true;
          }
          failures = 0;
        } catch (error) {
          mayHaveReady = true;
          failures++;
          if (failures === 1 || failures % 50 === 0) log.warn({ err: error }, "webhooks dispatcher: claim failed; retrying");
        }
      }
      if (stopped) break;
      if ((woken || (claimed > 0 && claimed === budget)) && failures === 0 && inFlight < maxInFlight) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, failures > 0 ? Math.min(2_000, 100 * failures) : (deps.pollMs ?? 500));
        wakeLoop = () => {
          clearTimeout(timer);
          resolve();
        };
        if (woken && failures === 0 && inFlight < maxInFlight) wakeLoop();
      });
      wakeLoop = undefined;
    }
  })();

  return {
    wake,
    reserve(wanted) {
      const budget = Math.min(wanted, maxInFlight - inFlight - reserved);
      if (stopped || budget <= 0) return undefined;
      reserved += budget;
      let released = false;
      return {
        limits: limits(budget),
        // Leased already: sent even while stopping (stop waits for them), as a claim's would be.
        adopt: (rows, committed) => begin(rows, committed),
        release() {
          if (released) return;
          released = true;
          reserved -= budget;
          roomFreed();
        },
      };
    },
    async stop() {
      stopped = true;
      wakeLoop?.();
      await loop;
      await Promise.allSettled([...sends]);
      await flushing;
    },
  };
}

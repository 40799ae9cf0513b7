/**
 * How an attempt's outcome moves its delivery, written in the transaction that also inserts the
 * attempt (webhook_delivery_attempts): success → SUCCEEDED and the subscription healthy again;
 * failure → PENDING at the next time the schedule (or Retry-After) gives, or FAILED when the
 * schedule is exhausted; "410 Gone", or failing without a success for longer than
 * disableAfterMs, disables the subscription and fails its pending deliveries. Every move is fenced
 * by the lease the delivery was claimed with: a claim that outlived its lease changes nothing.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { randomUUID } from "node:crypto";
import { AuditEventSchema, type AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import { PrincipalKind } from "../../gen/jobmesh/v1/auth_pb.js";
import { WebhookDisabledReason } from "../../gen/jobmesh/v1/webhooks_pb.js";
import { inTransaction, type Pool } from "../db/index.ts";
import { nextAttemptDelayMs } from "./schedule.ts";
import type { Logger } from "../telemetry/index.ts";
import type { AttemptResult } from "./send.ts";

/** A delivery this process holds a lease on. */
export interface ClaimedDelivery {
  id: string;
  webhookId: string;
  tenantId: string;
  /** lease_until as Postgres printed it (exact, for the fence). */
  lease: string;
  /** The number of this attempt, from 1. */
  attempt: number;
  replay: boolean;
}

/** The actor of what the delivery engine does on its own. */
export const systemActor = "system/webhooks";
/** The action an automatic disable is recorded under. */
export const disableAction = "jobmesh.v1.WebhookService.DisableWebhook";

/**
 * Records a group of successful attempts in one statement, then heals those of their
 * subscriptions that were failing in another (a failure committed while the first ran is healed
 * by the next success); resolves how many were recorded (the others' lease had ended: discarded).
 */
export async function recordSuccesses(db: Pool, group: readonly { delivery: ClaimedDelivery; result: AttemptResult }[]): Promise<number> {
  const col = <T>(f: (g: { delivery: ClaimedDelivery; result: AttemptResult }) => T) => group.map(f);
  const { rows } = await db.query<{ recorded: number; failing: string[] }>({
    name: "webhooks-record-successes",
    text: `WITH x AS (
       SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::int[], $4::int[], $5::bigint[], $6::text[], $7::timestamptz[], $8::bool[], $9::smallint[])
         AS x (id, lease, attempt, status_code, latency_us, excerpt, attempt_time, replay, outcome)
     ), done AS (
       -- Lost with a Postgres crash, a success is only sent again (at least once): no WAL flush wait.
       -- A replay asked for while this (not replayed) attempt was in flight is still owed: the
       -- delivery stays PENDING, due when the replay made it due, its next attempt a replay.
       UPDATE webhook_deliveries d
       SET status = CASE WHEN d.replay_pending AND NOT x.replay THEN 1 ELSE 2 END,
           next_attempt_time = CASE WHEN d.replay_pending AND NOT x.replay THEN d.next_attempt_time END,
           replay_pending = d.replay_pending AND NOT x.replay,
           attempt_count = x.attempt, lease_until = NULL, update_time = date_trunc('milliseconds', now())
       FROM x WHERE d.id = x.id AND d.lease_until = x.lease AND set_config('synchronous_commit', 'off', true) IS NOT NULL
       RETURNING d.id, d.webhook_id
     ), attempts AS (
       INSERT INTO webhook_delivery_attempts (delivery_id, attempt, outcome, status_code, latency_us, response_excerpt, error_message, attempt_time, replay)
       SELECT x.id, x.attempt, x.outcome, x.status_code, x.latency_us, x.excerpt, '', x.attempt_time, x.replay
       FROM x JOIN done ON done.id = x.id
       ON CONFLICT (delivery_id, attempt) DO NOTHING
     )
     -- The subscriptions to heal (failing until now); usually none, and then no second statement.
     SELECT count(*)::int AS recorded, coalesce(array_agg(DISTINCT w.id) FILTER (WHERE w.failing_since IS NOT NULL), '{}') AS failing
     FROM done JOIN webhooks w ON w.id = done.webhook_id`,
    values: [
      col((g) => g.delivery.id), col((g) => g.delivery.lease), col((g) => g.delivery.attempt), col((g) => g.result.statusCode),
      col((g) => g.result.latencyUs), col((g) => g.result.responseExcerpt), col((g) => g.result.attemptTime), col((g) => g.delivery.replay),
      col((g) => g.result.outcome),
    ],
  });
  const { recorded, failing } = rows[0];
  if (failing.length === 0) return recorded;
  // Healed in its own statement, holding no delivery row: the disable path locks the webhooks row
  // and then its deliveries, so taking them the other way round in one transaction could deadlock.
  await db.query(
    `UPDATE webhooks w SET failing_since = NULL
     FROM (SELECT id FROM webhooks WHERE id = ANY($1::uuid[]) AND failing_since IS NOT NULL ORDER BY id FOR NO KEY UPDATE) h
     WHERE w.id = h.id`,
    [failing],
  );
  return recorded;
}

export interface FailureDeps {
  retryScheduleMs: readonly number[];
  disableAfterMs: number;
  /** NOTIFY channel of subscription changes (the fan-out's cache listens). */
  changedChannel: string;
  /** Told when an outcome is discarded because its lease had ended. */
  log?: Pick<Logger, "warn">;
}

/** A subscription this failure disabled, and the audit event that says so. */
export interface Disabled {
  reason: WebhookDisabledReason;
  auditEvent: AuditEvent;
}

/** Records a failed attempt; returns what it disabled, if anything. */
export async function recordFailure(db: Pool, delivery: ClaimedDelivery, result: AttemptResult, deps: FailureDeps): Promise<Disabled | undefined> {
  const gone = result.statusCode === 410;
  const delayMs = gone ? undefined : nextAttemptDelayMs(deps.retryScheduleMs, delivery.attempt, result.retryAfterMs);
  return inTransaction(db, async (tx) => {
    // A delivery of a subscription disabled meanwhile is not retried.
    const moved = await tx.query<{ id: string }>(
      `UPDATE webhook_deliveries d
       SET status = CASE WHEN $3::int IS NULL OR w.state <> 1 THEN 3 ELSE 1 END,
           -- A replay asked for while this (not replayed) attempt was in flight is still owed, when it was asked.
           next_attempt_time = CASE WHEN $3::int IS NULL OR w.state <> 1 THEN NULL
                                    WHEN d.replay_pending AND NOT $5::bool THEN least(d.next_attempt_time, now() + $3::int * interval '1 millisecond')
                                    ELSE now() + $3::int * interval '1 millisecond' END,
           replay_pending = d.replay_pending AND NOT $5::bool AND $3::int IS NOT NULL AND w.state = 1,
           attempt_count = $4, lease_until = NULL, update_time = date_trunc('milliseconds', now())
       FROM webhooks w
       WHERE d.id = $1 AND d.lease_until = $2::timestamptz AND w.id = d.webhook_id
       RETURNING d.id`,
      [delivery.id, delivery.lease, delayMs ?? null, delivery.attempt, delivery.replay],
    );
    if (moved.rowCount === 0) {
      deps.log?.warn({ delivery: delivery.id, discarded: 1 }, "webhooks: failed attempt discarded, its lease had ended (it is sent again)");
      return undefined;
    }
    await tx.query(
      `INSERT INTO webhook_delivery_attempts (delivery_id, attempt, outcome, status_code, latency_us, response_excerpt, error_message, attempt_time, replay)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (delivery_id, attempt) DO NOTHING`,
      [delivery.id, delivery.attempt, result.outcome, result.statusCode, result.latencyUs, result.responseExcerpt, result.errorMessage, result.attemptTime, delivery.replay],
    );
    const { rows } = await tx.query<{ failing_since: Date; overdue: boolean; state: number }>(
      `UPDATE webhooks SET failing_since = coalesce(failing_since, now()) WHERE id = $1
       RETURNING failing_since, state, failing_since < now() - $2::bigint * interval '1 millisecond' AS overdue`,
      [delivery.webhookId, deps.disableAfterMs],
    );
    const webhook = rows[0];
    if (!webhook || webhook.state !== 1 || !(gone || webhook.overdue)) return undefined;
    const reason = gone ? WebhookDisabledReason.ENDPOINT_GONE : WebhookDisabledReason.REPEATED_FAILURES;
    // FOR UPDATE, the one lock a fan-out insert's FOR KEY SHARE conflicts with (claim.ts): an
    // insert in progress commits first and its rows are failed below with the rest; one that
    // starts now waits for this commit and skips the disabled subscription. No row stays pending.
    await tx.query("SELECT 1 FROM webhooks WHERE id = $1 FOR UPDATE", [delivery.webhookId]);
    await tx.query(
      `UPDATE webhooks SET state = 2, disabled_reason = $2, disable_time = date_trunc('milliseconds', now()),
         update_time = date_trunc('milliseconds', now()), version = version + 1
       WHERE id = $1`,
      [delivery.webhookId, reason],
    );
    // Its pending deliveries will never be sent: FAILED, as the contract says of a disabled subscription.
    await tx.query(
      `UPDATE webhook_deliveries SET status = 3, next_attempt_time = NULL, update_time = date_trunc('milliseconds', now())
       WHERE webhook_id = $1 AND status = 1`,
      [delivery.webhookId],
    );
    await tx.query("SELECT pg_notify($1, $2)", [deps.changedChannel, delivery.tenantId]);
    const why = gone
      ? "the endpoint answered 410 Gone"
      : `deliveries failed without a success since ${webhook.failing_since.toISOString()} (longer than ${deps.disableAfterMs} ms)`;
    return { reason, auditEvent: disableEvent(delivery, reason, why) };
  });
}

/** The audit event of an automatic disable: the system as actor, the subscription as resource. */
function disableEvent(delivery: ClaimedDelivery, reason: WebhookDisabledReason, why: string): AuditEvent {
  return create(AuditEventSchema, {
    name: `auditEvents/${randomUUID()}`,
    tenant: delivery.tenantId,
    actor: { subject: systemActor, kind: PrincipalKind.SYSTEM, roles: [], credentialHint: "" },
    action: disableAction,
    resource: `webhooks/${delivery.webhookId}`,
    resourceType: "jobmesh.dev/Webhook",
    outcome: { code: 0, message: `disabled (${WebhookDisabledReason[reason]}): ${why}` },
    eventTime: timestampFromDate(new Date()),
    request: JSON.stringify({ name: `webhooks/${delivery.webhookId}`, reason: `WEBHOOK_DISABLED_REASON_${WebhookDisabledReason[reason]}` }),
    recorder: "webhooks",
  });
}

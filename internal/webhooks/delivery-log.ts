/**
 * The delivery log as the API sees it: list and get deliveries with their attempts, and queue
 * them again (ReplayWebhookDelivery, RecoverWebhookDeliveries). The delivery engine writes these
 * tables; the API only reads them, except to set a delivery PENDING, due now, with
 * replay_pending, which the dispatcher copies onto the attempt it makes next (attempt.replay) and
 * clears. Every query takes the tenant and the subscription.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
import {
  WebhookDeliveryAttemptSchema,
  WebhookDeliverySchema,
  type WebhookAttemptOutcome,
  type WebhookDelivery,
  type WebhookDeliveryAttempt,
  type WebhookDeliveryStatus,
} from "../../gen/jobmesh/v1/webhooks_pb.js";
import type { Queryable } from "../db/index.ts";
import { keysetSql, pageSizeOf, parseOrderBy, splitPage, type KeysetPosition, type PageTokens } from "../paging/index.ts";
import { WebhookDeliveryNotFoundError } from "./errors.ts";
import { deliveryFilterSql } from "./filter.ts";
import { deliveriesDueChannel } from "./subscriptions.ts";

export { deliveriesDueChannel };

interface DeliveryRow {
  id: string;
  webhook_id: string;
  event_id: string;
  event_type: number;
  job: string;
  status: number;
  attempt_count: number;
  next_attempt_time: Date | null;
  create_time: Date;
  update_time: Date;
}

interface AttemptRow {
  delivery_id: string;
  attempt: number;
  outcome: number;
  status_code: number;
  latency_us: string;
  response_excerpt: string;
  error_message: string;
  attempt_time: Date;
  replay: boolean;
}

const deliveryColumns = "id, webhook_id, event_id, event_type, job, status, attempt_count, next_attempt_time, create_time, update_time";
const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The ids in "webhooks/{webhook}/deliveries/{delivery}"; a name that cannot be ours is not found. */
export function deliveryIdsOf(name: string): { webhookId: string; deliveryId: string } {
  const m = /^webhooks\/([^/]+)\/deliveries\/([^/]+)$/.exec(name);
  if (!m || !uuidPattern.test(m[1]) || !uuidPattern.test(m[2])) throw new WebhookDeliveryNotFoundError(name);
  return { webhookId: m[1], deliveryId: m[2] };
}

function toAttempt(row: AttemptRow): WebhookDeliveryAttempt {
  const us = BigInt(row.latency_us);
  return create(WebhookDeliveryAttemptSchema, {
    attempt: row.attempt,
    outcome: row.outcome as WebhookAttemptOutcome,
    statusCode: row.status_code,
    latency: { seconds: us / 1_000_000n, nanos: Number(us % 1_000_000n) * 1000 },
    responseExcerpt: row.response_excerpt,
    errorMessage: row.error_message,
    attemptTime: timestampFromDate(row.attempt_time),
    replay: row.replay,
  });
}

function toDelivery(row: DeliveryRow, attempts: AttemptRow[]): WebhookDelivery {
  return create(WebhookDeliverySchema, {
    name: `webhooks/${row.webhook_id}/deliveries/${row.id}`,
    eventId: row.event_id,
    eventType: row.event_type as JobEventType,
    job: row.job,
    status: row.status as WebhookDeliveryStatus,
    attemptCount: row.attempt_count,
    // Only while PENDING: a finished delivery has no next attempt, whatever the column holds.
    nextAttemptTime: row.status === 1 && row.next_attempt_time ? timestampFromDate(row.next_attempt_time) : undefined,
    attempts: attempts.map(toAttempt),
    createTime: timestampFromDate(row.create_time),
    updateTime: timestampFromDate(row.update_time),
  });
}

/** The deliveries of `rows` with their attempts, oldest attempt first: one query for the whole page. */
async function withAttempts(db: Queryable, rows: DeliveryRow[]): Promise<WebhookDelivery[]> {
  if (rows.length === 0) return [];
  const { rows: attempts } = await db.query<AttemptRow>(
    `SELECT delivery_id, attempt, outcome, status_code, latency_us::text AS latency_us, response_excerpt, error_message, attempt_time, replay
     FROM webhook_delivery_attempts WHERE delivery_id = ANY ($1::uuid[]) ORDER BY delivery_id, attempt`,
    [rows.map((r) => r.id)],
  );
  const byDelivery = Map.groupBy(attempts, (a) => a.delivery_id);
  return rows.map((row) => toDelivery(row, byDelivery.get(row.id) ?? []));
}

export interface ListDeliveriesQuery {
  pageSize: number;
  pageToken: string;
  filter: string;
  orderBy: string;
}

/** One page of a subscription's deliveries, newest first by default. */
export async function listDeliveries(db: Queryable, pageTokens: PageTokens, tenantId: string, webhookId: string, q: ListDeliveriesQuery) {
  const params: unknown[] = [tenantId, webhookId];
  const param = (value: unknown) => `$${params.push(value)}`;
  const where = ["tenant_id = $1", "webhook_id = $2", ...deliveryFilterSql(q.filter, param)];
  const orderBy = parseOrderBy(q.orderBy, ["create_time", "update_time"], { field: "create_time", descending: true });
  // The token is bound to the subscription too: a page of one subscription does not resume another.
  const queryKey = JSON.stringify([webhookId, q.filter, q.orderBy]);
  const after = q.pageToken ? pageTokens.decode<KeysetPosition>(q.pageToken, queryKey) : undefined;
  const keyset = keysetSql({ sort: orderBy.field, sortType: "timestamptz", id: "id", idType: "uuid", descending: orderBy.descending, after, param });
  if (keyset.resume) where.push(keyset.resume);
  const limit = pageSizeOf(q.pageSize);
  const { rows } = await db.query<DeliveryRow & { sort_value: string }>(
    `SELECT ${deliveryColumns}, (${orderBy.field})::text AS sort_value FROM webhook_deliveries
     WHERE ${where.join(" AND ")} ${keyset.orderBy} LIMIT ${param(limit + 1)}`,
    params,
  );
  const { page, nextPageToken } = splitPage(rows, limit, (last) => [last.sort_value, last.id], pageTokens, queryKey);
  return { deliveries: await withAttempts(db, page), nextPageToken };
}

/** One delivery with every attempt. */
export async function getDelivery(db: Queryable, tenantId: string, name: string): Promise<WebhookDelivery> {
  const { webhookId, deliveryId } = deliveryIdsOf(name);
  const { rows } = await db.query<DeliveryRow>(
    `SELECT ${deliveryColumns} FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 AND id = $3`,
    [tenantId, webhookId, deliveryId],
  );
  if (!rows[0]) throw new WebhookDeliveryNotFoundError(name);
  return (await withAttempts(db, rows))[0]!;
}

/**
 * Queues a delivery again, whatever its status: PENDING, due now, its next attempt a replay. A
 * claim in flight (lease_until) is left alone: when its attempt is recorded the replay is still
 * owed (outcomes.ts), and the delivery is due again once the lease ends.
 */
export async function replayDelivery(db: Queryable, tenantId: string, name: string): Promise<WebhookDelivery> {
  const { webhookId, deliveryId } = deliveryIdsOf(name);
  const { rows } = await db.query<DeliveryRow>(
    `WITH queued AS (
       UPDATE webhook_deliveries SET status = 1, next_attempt_time = now(), replay_pending = true,
         update_time = date_trunc('milliseconds', now())
       WHERE tenant_id = $1 AND webhook_id = $2 AND id = $3
       RETURNING ${deliveryColumns})
     SELECT queued.*, pg_notify($4, '') IS NULL AS notified FROM queued`,
    [tenantId, webhookId, deliveryId, deliveriesDueChannel],
  );
  if (!rows[0]) throw new WebhookDeliveryNotFoundError(name);
  return (await withAttempts(db, rows))[0]!;
}

/** Queues again every FAILED delivery of the subscription created at or after `since`; returns how many. */
export async function recoverDeliveries(db: Queryable, tenantId: string, webhookId: string, since: Date): Promise<number> {
  const { rows } = await db.query<{ count: number }>(
    `WITH queued AS (
       UPDATE webhook_deliveries SET status = 1, next_attempt_time = now(), replay_pending = true,
         update_time = date_trunc('milliseconds', now())
       WHERE tenant_id = $1 AND webhook_id = $2 AND status = 3 AND create_time >= $3
       RETURNING 1)
     SELECT count(*)::int AS count, pg_notify($4, '') IS NULL AS notified FROM queued`,
    [tenantId, webhookId, since, deliveriesDueChannel],
  );
  return rows[0]?.count ?? 0;
}

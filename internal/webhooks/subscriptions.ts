/**
 * The webhooks table: the one writer of subscriptions (create, update, delete, rotate), its reads,
 * and the row → Webhook message mapping. Every query takes the tenant. Every write sends NOTIFY
 * webhooks_changed with the tenant id in its transaction, so the fan-out's cache of a tenant's
 * subscriptions is dropped when (and only after) the change is visible.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createHash } from "node:crypto";
import type { JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
import { WebhookDisabledReason, WebhookSchema, WebhookState, type Webhook } from "../../gen/jobmesh/v1/webhooks_pb.js";
import type { Queryable } from "../db/index.ts";
import { WebhookNotFoundError } from "./errors.ts";

/** The channel webhook writers NOTIFY on; the payload is the tenant id. */
export const webhooksChangedChannel = "webhooks_changed";
/** NOTIFY on it (any payload) to have due deliveries claimed now: the fan-out and replays do; the dispatcher polls behind it. */
export const deliveriesDueChannel = "webhook_deliveries_due";

/** A webhooks row as the service reads it (the delivery engine reads the same columns). */
export interface WebhookRow {
  id: string;
  tenant_id: string;
  url: string;
  event_types: number[];
  description: string;
  state: number;
  disabled_reason: number;
  labels: Record<string, string>;
  filter_pipeline: string;
  filter_job_labels: Record<string, string>;
  max_concurrency: number;
  max_rate_per_second: number;
  secret_sealed: Buffer;
  previous_secret_sealed: Buffer | null;
  previous_secret_expire_time: Date | null;
  secret_rotate_time: Date;
  version: number;
  request_id: string | null;
  failing_since: Date | null;
  create_time: Date;
  update_time: Date;
  disable_time: Date | null;
}

/** Every column of WebhookRow, for SELECT and RETURNING. */
export const webhookColumns = `id, tenant_id, url, event_types, description, state, disabled_reason, labels,
  filter_pipeline, filter_job_labels, max_concurrency, max_rate_per_second, secret_sealed,
  previous_secret_sealed, previous_secret_expire_time, secret_rotate_time, version, request_id,
  failing_since, create_time, update_time, disable_time`;

/** The fields a caller sets; what UpdateWebhook's mask selects among. */
export interface WebhookFields {
  url: string;
  eventTypes: number[];
  description: string;
  state: number;
  disabledReason: number;
  disableTime: Date | null;
  labels: Record<string, string>;
  filterPipeline: string;
  filterJobLabels: Record<string, string>;
  maxConcurrency: number;
  maxRatePerSecond: number;
}

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The id in "webhooks/{id}"; a name that cannot be ours is not found (never a cast error). */
export function webhookIdOf(name: string): string {
  const id = name.startsWith("webhooks/") ? name.slice("webhooks/".length) : "";
  if (!uuidPattern.test(id)) throw new WebhookNotFoundError(name);
  return id;
}

/** Opaque; changes with every write of the row. */
export function etagOf(row: Pick<WebhookRow, "id" | "version">): string {
  return createHash("sha256").update(`${row.id}\0${row.version}`).digest("base64url").slice(0, 16);
}

/** The Webhook message of a row; never carries a secret. */
export function toWebhook(row: WebhookRow): Webhook {
  const hasJobFilter = row.filter_pipeline !== "" || Object.keys(row.filter_job_labels).length > 0;
  return create(WebhookSchema, {
    name: `webhooks/${row.id}`,
    url: row.url,
    eventTypes: row.event_types as JobEventType[],
    description: row.description,
    state: row.state as WebhookState,
    disabledReason: row.disabled_reason as WebhookDisabledReason,
    labels: row.labels,
    createTime: timestampFromDate(row.create_time),
    updateTime: timestampFromDate(row.update_time),
    disableTime: row.disable_time ? timestampFromDate(row.disable_time) : undefined,
    secretRotateTime: timestampFromDate(row.secret_rotate_time),
    etag: etagOf(row),
    jobFilter: hasJobFilter ? { pipeline: row.filter_pipeline, jobLabels: row.filter_job_labels } : undefined,
    maxConcurrency: row.max_concurrency,
    maxRatePerSecond: row.max_rate_per_second,
  });
}

/** Tells the fan-out that `tenantId`'s subscriptions changed; delivered at the commit of `db`'s transaction. */
export async function notifyWebhooksChanged(db: Queryable, tenantId: string): Promise<void> {
  await db.query("SELECT pg_notify($1, $2)", [webhooksChangedChannel, tenantId]);
}

/** The tenant's subscription `id`, locked for the transaction when `forUpdate`. */
export async function selectWebhook(db: Queryable, tenantId: string, id: string, forUpdate = false): Promise<WebhookRow | undefined> {
  const { rows } = await db.query<WebhookRow>(
    `SELECT ${webhookColumns} FROM webhooks WHERE tenant_id = $1 AND id = $2${forUpdate ? " FOR UPDATE" : ""}`,
    [tenantId, id],
  );
  return rows[0];
}

/** The subscription an earlier CreateWebhook with this request_id made in the tenant. */
export async function selectWebhookByRequestId(db: Queryable, tenantId: string, requestId: string): Promise<WebhookRow | undefined> {
  const { rows } = await db.query<WebhookRow>(`SELECT ${webhookColumns} FROM webhooks WHERE tenant_id = $1 AND request_id = $2`, [tenantId, requestId]);
  return rows[0];
}

/** Inserts a subscription; undefined when request_id was used before in the tenant. */
export async function insertWebhook(db: Queryable, tenantId: string, id: string, fields: WebhookFields, secretSealed: Buffer, requestId: string | null): Promise<WebhookRow | undefined> {
  const { rows } = await db.query<WebhookRow>(
    `INSERT INTO webhooks (id, tenant_id, url, event_types, description, state, disabled_reason, disable_time, labels,
       filter_pipeline, filter_job_labels, max_concurrency, max_rate_per_second, secret_sealed, request_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
     ON CONFLICT (tenant_id, request_id) DO NOTHING
     RETURNING ${webhookColumns}`,
    [id, tenantId, fields.url, fields.eventTypes, fields.description, fields.state, fields.disabledReason, fields.disableTime,
      fields.labels, fields.filterPipeline, fields.filterJobLabels, fields.maxConcurrency, fields.maxRatePerSecond, secretSealed, requestId],
  );
  return rows[0];
}

/** Writes every caller-set field of the row and bumps its version (the etag). */
export async function updateWebhookRow(db: Queryable, tenantId: string, id: string, fields: WebhookFields, clearFailing: boolean): Promise<WebhookRow> {
  const { rows } = await db.query<WebhookRow>(
    `UPDATE webhooks SET url = $3, event_types = $4, description = $5, state = $6, disabled_reason = $7, disable_time = $8,
       labels = $9, filter_pipeline = $10, filter_job_labels = $11, max_concurrency = $12, max_rate_per_second = $13,
       failing_since = CASE WHEN $14 THEN NULL ELSE failing_since END,
       version = version + 1, update_time = date_trunc('milliseconds', now())
     WHERE tenant_id = $1 AND id = $2
     RETURNING ${webhookColumns}`,
    [tenantId, id, fields.url, fields.eventTypes, fields.description, fields.state, fields.disabledReason, fields.disableTime,
      fields.labels, fields.filterPipeline, fields.filterJobLabels, fields.maxConcurrency, fields.maxRatePerSecond, clearFailing],
  );
  return rows[0]!;
}

/** Replaces the secret, keeping the current one (sealed) as the previous until `previousExpireTime` (none when null). */
export async function rotateWebhookRow(db: Queryable, tenantId: string, id: string, secretSealed: Buffer, previousExpireTime: Date | null): Promise<WebhookRow> {
  const { rows } = await db.query<WebhookRow>(
    `UPDATE webhooks SET previous_secret_sealed = CASE WHEN $4::timestamptz IS NULL THEN NULL ELSE secret_sealed END,
       previous_secret_expire_time = $4, secret_sealed = $3,
       secret_rotate_time = date_trunc('milliseconds', now()), version = version + 1, update_time = date_trunc('milliseconds', now())
     WHERE tenant_id = $1 AND id = $2
     RETURNING ${webhookColumns}`,
    [tenantId, id, secretSealed, previousExpireTime],
  );
  return rows[0]!;
}

/** Deletes the subscription; its deliveries and attempts go with it (ON DELETE CASCADE). */
export async function deleteWebhookRow(db: Queryable, tenantId: string, id: string): Promise<void> {
  await db.query("DELETE FROM webhooks WHERE tenant_id = $1 AND id = $2", [tenantId, id]);
}

/** The caller-set fields of a row, to change some of them. */
export function fieldsOf(row: WebhookRow): WebhookFields {
  return {
    url: row.url,
    eventTypes: row.event_types,
    description: row.description,
    state: row.state,
    disabledReason: row.disabled_reason,
    disableTime: row.disable_time,
    labels: row.labels,
    filterPipeline: row.filter_pipeline,
    filterJobLabels: row.filter_job_labels,
    maxConcurrency: row.max_concurrency,
    maxRatePerSecond: row.max_rate_per_second,
  };
}

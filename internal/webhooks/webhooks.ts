/**
 * The webhooks domain as the API uses it: subscriptions (create, get, list, update, delete,
 * rotate the secret), the delivery log and TestWebhook. URLs are checked by internal/netpolicy
 * when subscribed (and the delivery engine checks the address it connects to, every time).
 */
import type { Webhook, WebhookDeliveryAttempt } from "../../gen/jobmesh/v1/webhooks_pb.js";
import { WebhookDisabledReason, WebhookState } from "../../gen/jobmesh/v1/webhooks_pb.js";
import { inTransaction, type Pool } from "../db/index.ts";
import { assertResolvesAllowed, checkWebhookUrl, type NetPolicy } from "../netpolicy/index.ts";
import { keysetSql, pageSizeOf, parseOrderBy, splitPage, type KeysetPosition, type PageTokens } from "../paging/index.ts";
import { getDelivery, listDeliveries, recoverDeliveries, replayDelivery, type ListDeliveriesQuery } from "./delivery-log.ts";
import { InvalidWebhookArgumentError, StaleWebhookEtagError, WebhookNotFoundError, WebhookTestUnavailableError, WebhookUrlRefusedError } from "./errors.ts";
import { webhookFilterSql } from "./filter.ts";
import { generateWebhookSecret, sealWebhookSecret } from "./secrets.ts";
import * as store from "./subscriptions.ts";
import { randomUUID } from "node:crypto";

export interface WebhookDomainDeps {
  db: Pool;
  pageTokens: PageTokens;
  /** Seals the signing secrets (internal/sealing). */
  keyEncryptionKey: Buffer;
  /** Who may be subscribed: https only unless allowHttp, no private or loopback addresses unless allowed. */
  policy: NetPolicy;
  /** The DNS lookup of the subscribe-time check; the system's when unset (tests inject one). */
  lookup?: Parameters<typeof assertResolvesAllowed>[2];
  /** Sends TestWebhook's ping (the delivery engine's sendTestPing); unset: TestWebhook is FAILED_PRECONDITION. */
  testPing?: (row: store.WebhookRow) => Promise<WebhookDeliveryAttempt>;
}

/** What a caller sets on create and update (the Webhook message's writable fields). */
export type WebhookInput = Pick<Webhook, "url" | "eventTypes" | "description" | "state" | "labels" | "jobFilter" | "maxConcurrency" | "maxRatePerSecond">;

/** UpdateWebhook's mask paths; an empty mask updates all of them. */
export const updatableFields = ["url", "event_types", "description", "state", "labels", "job_filter", "max_concurrency", "max_rate_per_second"] as const;
const maskAliases: Record<string, (typeof updatableFields)[number]> = { "job_filter.pipeline": "job_filter", "job_filter.job_labels": "job_filter" };

export interface ListWebhooksQuery {
  pageSize: number;
  pageToken: string;
  filter: string;
  orderBy: string;
}

const defaultOverlapMs = 24 * 3_600_000;

export type WebhookDomain = ReturnType<typeof createWebhookDomain>;

export function createWebhookDomain(deps: WebhookDomainDeps) {
  const { db, pageTokens, keyEncryptionKey: kek } = deps;

  /** The URL as the policy sees it, or WebhookUrlRefusedError naming `field` and why. */
  async function checkUrl(field: string, raw: string, resolve: boolean): Promise<void> {
    let url: URL;
    try {
      url = checkWebhookUrl(raw, deps.policy);
    } catch (error) {
      throw new WebhookUrlRefusedError(field, reasonOf(error), error);
    }
    if (!resolve) return;
    try {
      await assertResolvesAllowed(url, deps.policy, deps.lookup);
    } catch (error) {
      throw new WebhookUrlRefusedError(field, reasonOf(error), error);
    }
  }

  async function current(tenantId: string, name: string, forUpdate: boolean, tx: Parameters<typeof store.selectWebhook>[0] = db) {
    const row = await store.selectWebhook(tx, tenantId, store.webhookIdOf(name), forUpdate);
    if (!row) throw new WebhookNotFoundError(name);
    return row;
  }

  return {
    /** A new subscription and its secret (shown this once); a repeated request_id returns the first without it. */
    async create(tenantId: string, input: WebhookInput, requestId: string): Promise<{ webhook: Webhook; secret: string }> {
      await checkUrl("webhook.url", input.url, false);
      if (requestId) {
        const earlier = await store.selectWebhookByRequestId(db, tenantId, requestId);
        if (earlier) return { webhook: store.toWebhook(earlier), secret: "" };
      }
      await checkUrl("webhook.url", input.url, true);
      const id = randomUUID();
      const secret = generateWebhookSecret();
      const fields = fieldsFrom(input, undefined);
      const row = await inTransaction(db, async (tx) => {
        const inserted = await store.insertWebhook(tx, tenantId, id, fields, sealWebhookSecret(kek, id, secret), requestId || null);
        if (inserted) await store.notifyWebhooksChanged(tx, tenantId);
        return inserted;
      });
      if (row) return { webhook: store.toWebhook(row), secret };
      // Another call with the same request_id won the insert: it showed the secret.
      const winner = await store.selectWebhookByRequestId(db, tenantId, requestId);
      return { webhook: store.toWebhook(winner!), secret: "" };
    },

    async get(tenantId: string, name: string): Promise<Webhook> {
      return store.toWebhook(await current(tenantId, name, false));
    },

    async list(tenantId: string, q: ListWebhooksQuery): Promise<{ webhooks: Webhook[]; nextPageToken: string }> {
      const params: unknown[] = [tenantId];
      const param = (value: unknown) => `$${params.push(value)}`;
      const where = ["tenant_id = $1", ...webhookFilterSql(q.filter, param)];
      const orderBy = parseOrderBy(q.orderBy, ["create_time", "update_time"], { field: "create_time", descending: true });
      const queryKey = JSON.stringify([q.filter, q.orderBy]);
      const after = q.pageToken ? pageTokens.decode<KeysetPosition>(q.pageToken, queryKey) : undefined;
      const keyset = keysetSql({ sort: orderBy.field, sortType: "timestamptz", id: "id", idType: "uuid", descending: orderBy.descending, after, param });
      if (keyset.resume) where.push(keyset.resume);
      const limit = pageSizeOf(q.pageSize);
      const { rows } = await db.query<store.WebhookRow & { sort_value: string }>(
        `SELECT ${store.webhookColumns}, (${orderBy.field})::text AS sort_value FROM webhooks
         WHERE ${where.join(" AND ")} ${keyset.orderBy} LIMIT ${param(limit + 1)}`,
        params,
      );
      const { page, nextPageToken } = splitPage(rows, limit, (last) => [last.sort_value, last.id], pageTokens, queryKey);
      return { webhooks: page.map(store.toWebhook), nextPageToken };
    },

    /** Changes the masked fields; ACTIVE re-enables (and forgets past failures), DISABLED pauses. */
    async update(tenantId: string, name: string, etag: string, maskPaths: string[], input: WebhookInput): Promise<Webhook> {
      const mask = maskOf(maskPaths);
      if (mask.has("url")) await checkUrl("webhook.url", input.url, true);
      const row = await inTransaction(db, async (tx) => {
        const was = await current(tenantId, name, true, tx);
        if (etag && etag !== store.etagOf(was)) throw new StaleWebhookEtagError(name);
        const next = fieldsFrom(input, { row: was, mask });
        const reEnabled = was.state !== WebhookState.ACTIVE && next.state === WebhookState.ACTIVE;
        const updated = await store.updateWebhookRow(tx, tenantId, was.id, next, reEnabled);
        await store.notifyWebhooksChanged(tx, tenantId);
        return updated;
      });
      return store.toWebhook(row);
    },

    /** Deletes the subscription and its delivery log (pending deliveries with it). */
    async delete(tenantId: string, name: string, etag: string): Promise<void> {
      await inTransaction(db, async (tx) => {
        const was = await current(tenantId, name, true, tx);
        if (etag && etag !== store.etagOf(was)) throw new StaleWebhookEtagError(name);
        await store.deleteWebhookRow(tx, tenantId, was.id);
        await store.notifyWebhooksChanged(tx, tenantId);
      });
    },

    /** A new secret (shown once); the previous one keeps signing for `overlapMs` (default 24 h, 0 ends it now). */
    async rotateSecret(tenantId: string, name: string, overlapMs: number | undefined): Promise<{ webhook: Webhook; secret: string; previousSecretExpireTime: Date }> {
      const id = store.webhookIdOf(name);
      const secret = generateWebhookSecret();
      const overlap = overlapMs ?? defaultOverlapMs;
      const row = await inTransaction(db, async (tx) => {
        await current(tenantId, name, true, tx);
        const expire = overlap > 0 ? new Date(Date.now() + overlap) : null;
        const rotated = await store.rotateWebhookRow(tx, tenantId, id, sealWebhookSecret(kek, id, secret), expire);
        await store.notifyWebhooksChanged(tx, tenantId);
        return rotated;
      });
      return { webhook: store.toWebhook(row), secret, previousSecretExpireTime: row.previous_secret_expire_time ?? row.secret_rotate_time };
    },

    async listDeliveries(tenantId: string, parent: string, q: ListDeliveriesQuery) {
      const row = await current(tenantId, parent, false);
      return listDeliveries(db, pageTokens, tenantId, row.id, q);
    },

    getDelivery: (tenantId: string, name: string) => getDelivery(db, tenantId, name),
    replayDelivery: (tenantId: string, name: string) => replayDelivery(db, tenantId, name),

    async recoverDeliveries(tenantId: string, name: string, since: Date): Promise<number> {
      const row = await current(tenantId, name, false);
      return recoverDeliveries(db, tenantId, row.id, since);
    },

    /** Sends a signed ping now, to an active or disabled subscription; not retried, not logged. */
    async test(tenantId: string, name: string): Promise<WebhookDeliveryAttempt> {
      const row = await current(tenantId, name, false);
      if (!deps.testPing) throw new WebhookTestUnavailableError();
      return deps.testPing(row);
    },
  };
}

/** The policy's own sentence (UrlPolicyError messages are written for the subscriber). */
function reasonOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function maskOf(paths: string[]): Set<(typeof updatableFields)[number]> {
  if (paths.length === 0) return new Set(updatableFields);
  return new Set(paths.map((path) => {
    const field = maskAliases[path] ?? updatableFields.find((f) => f === path);
    if (!field) throw new InvalidWebhookArgumentError("update_mask", `path "${path}" cannot be updated; use ${updatableFields.join(", ")}`);
    return field;
  }));
}

/** The row's new fields: the input's where the mask says (all of them on create), the row's elsewhere. */
function fieldsFrom(input: WebhookInput, base: { row: store.WebhookRow; mask: Set<string> } | undefined): store.WebhookFields {
  const was = base ? store.fieldsOf(base.row) : undefined;
  const take = (field: (typeof updatableFields)[number]) => !was || base!.mask.has(field);
  const next: store.WebhookFields = was ?? {
    url: "", eventTypes: [], description: "", state: WebhookState.ACTIVE, disabledReason: WebhookDisabledReason.UNSPECIFIED,
    disableTime: null, labels: {}, filterPipeline: "", filterJobLabels: {}, maxConcurrency: 0, maxRatePerSecond: 0,
  };
  if (take("url")) next.url = input.url;
  if (take("event_types")) next.eventTypes = [...input.eventTypes];
  if (take("description")) next.description = input.description;
  if (take("labels")) next.labels = { ...input.labels };
  if (take("job_filter")) {
    next.filterPipeline = input.jobFilter?.pipeline ?? "";
    next.filterJobLabels = { ...input.jobFilter?.jobLabels };
  }
  if (take("max_concurrency")) next.maxConcurrency = input.maxConcurrency;
  if (take("max_rate_per_second")) next.maxRatePerSecond = input.maxRatePerSecond;
  // UNSPECIFIED leaves the state as it is (ACTIVE on create).
  if (take("state") && input.state === WebhookState.ACTIVE && next.state !== WebhookState.ACTIVE) {
    Object.assign(next, { state: WebhookState.ACTIVE, disabledReason: WebhookDisabledReason.UNSPECIFIED, disableTime: null });
  } else if (take("state") && input.state === WebhookState.DISABLED && next.state !== WebhookState.DISABLED) {
    Object.assign(next, { state: WebhookState.DISABLED, disabledReason: WebhookDisabledReason.MANUAL, disableTime: new Date() });
  }
  if (!was && next.url === "") throw new InvalidWebhookArgumentError("webhook.url", "is required");
  return next;
}

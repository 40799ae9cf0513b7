/**
 * WebhookService handlers: read the caller's tenant, call the webhooks domain, shape the
 * response. Every query is scoped to the caller's tenant here, in one place; requests were
 * validated (protovalidate) and domain errors are mapped by the interceptors. Secrets appear only
 * in the responses of CreateWebhook and RotateWebhookSecret (fields marked redact, so the audit
 * log never holds them).
 */
import { create } from "@bufbuild/protobuf";
import { durationMs, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  CreateWebhookResponseSchema,
  DeleteWebhookResponseSchema,
  GetWebhookDeliveryResponseSchema,
  GetWebhookResponseSchema,
  ListWebhookDeliveriesResponseSchema,
  ListWebhooksResponseSchema,
  RecoverWebhookDeliveriesResponseSchema,
  ReplayWebhookDeliveryResponseSchema,
  RotateWebhookSecretResponseSchema,
  TestWebhookResponseSchema,
  UpdateWebhookResponseSchema,
  WebhookSchema,
  WebhookService,
} from "../../gen/jobmesh/v1/webhooks_pb.js";
import { callerOf } from "../rpc/context.ts";
import { InvalidWebhookArgumentError } from "./errors.ts";
import type { WebhookDomain } from "./webhooks.ts";

export { WebhookService };

/** WebhookService over `domain`: thin handlers, the tenant always the caller's. */
export function createWebhookService(domain: WebhookDomain): ServiceImpl<typeof WebhookService> {
  return {
    async createWebhook(req, ctx) {
      const { tenantId } = callerOf(ctx.values);
      const { webhook, secret } = await domain.create(tenantId, req.webhook ?? create(WebhookSchema), req.requestId);
      return create(CreateWebhookResponseSchema, { webhook, secret });
    },
    async getWebhook(req, ctx) {
      return create(GetWebhookResponseSchema, { webhook: await domain.get(callerOf(ctx.values).tenantId, req.name) });
    },
    async listWebhooks(req, ctx) {
      const page = await domain.list(callerOf(ctx.values).tenantId, { pageSize: req.pageSize, pageToken: req.pageToken, filter: req.filter, orderBy: req.orderBy });
      return create(ListWebhooksResponseSchema, page);
    },
    async updateWebhook(req, ctx) {
      const { tenantId } = callerOf(ctx.values);
      const input = req.webhook ?? create(WebhookSchema);
      if (input.name === "") throw new InvalidWebhookArgumentError("webhook.name", "is required");
      const webhook = await domain.update(tenantId, input.name, input.etag, req.updateMask?.paths ?? [], input);
      return create(UpdateWebhookResponseSchema, { webhook });
    },
    async deleteWebhook(req, ctx) {
      await domain.delete(callerOf(ctx.values).tenantId, req.name, req.etag);
      return create(DeleteWebhookResponseSchema);
    },
    async rotateWebhookSecret(req, ctx) {
      const { tenantId } = callerOf(ctx.values);
      const rotated = await domain.rotateSecret(tenantId, req.name, req.overlap ? durationMs(req.overlap) : undefined);
      return create(RotateWebhookSecretResponseSchema, {
        webhook: rotated.webhook,
        secret: rotated.secret,
        previousSecretExpireTime: timestampFromDate(rotated.previousSecretExpireTime),
      });
    },
    async listWebhookDeliveries(req, ctx) {
      const page = await domain.listDeliveries(callerOf(ctx.values).tenantId, req.parent, { pageSize: req.pageSize, pageToken: req.pageToken, filter: req.filter, orderBy: req.orderBy });
      return create(ListWebhookDeliveriesResponseSchema, page);
    },
    async getWebhookDelivery(req, ctx) {
      return create(GetWebhookDeliveryResponseSchema, { delivery: await domain.getDelivery(callerOf(ctx.values).tenantId, req.name) });
    },
    async replayWebhookDelivery(req, ctx) {
      return create(ReplayWebhookDeliveryResponseSchema, { delivery: await domain.replayDelivery(callerOf(ctx.values).tenantId, req.name) });
    },
    async recoverWebhookDeliveries(req, ctx) {
      const { tenantId } = callerOf(ctx.values);
      // protovalidate requires `since`; the fallback only satisfies the type.
      const since = req.since ? timestampDate(req.since) : new Date(0);
      return create(RecoverWebhookDeliveriesResponseSchema, { queuedCount: await domain.recoverDeliveries(tenantId, req.name, since) });
    },
    async testWebhook(req, ctx) {
      return create(TestWebhookResponseSchema, { attempt: await domain.test(callerOf(ctx.values).tenantId, req.name) });
    },
  };
}

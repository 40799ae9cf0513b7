/**
 * Webhooks (issue 13): subscriptions, their sealed signing secrets and the delivery log as the
 * API sees them. The delivery engine (fan-out, dispatcher, send) lives beside them and reads the
 * same tables.
 */
export { createWebhookDomain, updatableFields, type WebhookDomain, type WebhookDomainDeps, type WebhookInput } from "./webhooks.ts";
export { etagOf, toWebhook, webhookColumns, webhookIdOf, webhooksChangedChannel, type WebhookRow } from "./subscriptions.ts";
export { deliveriesDueChannel, deliveryIdsOf } from "./delivery-log.ts";
export { generateWebhookSecret, sealWebhookSecret, signingSecretsOf, unsealWebhookSecret, type SealedSecrets } from "./secrets.ts";
export * from "./errors.ts";

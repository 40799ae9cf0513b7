/**
 * Signing secrets: "whsec_" + base64 of 32 random bytes (the Standard Webhooks form, which its
 * libraries accept as is), shown to the caller once and kept sealed with internal/sealing under
 * the key-encryption key. Not hashed: the service needs the secret itself to sign deliveries.
 * The sealed value is bound to the subscription (its resource name is the additional data), so
 * a sealed secret copied to another row does not unseal.
 */
import { randomBytes } from "node:crypto";
import { seal, unseal } from "../sealing/index.ts";

export const secretPrefix = "whsec_";

/** A new signing secret, to show once and seal. */
export function generateWebhookSecret(): string {
  return secretPrefix + randomBytes(32).toString("base64");
}

/** The key id a subscription's secrets are sealed under. */
function keyIdOf(webhookId: string): string {
  return `webhooks/${webhookId}`;
}

/** Seals `secret` ("whsec_...") for the subscription `webhookId`. */
export function sealWebhookSecret(kek: Buffer, webhookId: string, secret: string): Buffer {
  return seal(kek, keyIdOf(webhookId), secret);
}

/** The "whsec_..." secret sealed for `webhookId`; throws when it was sealed for another row or key. */
export function unsealWebhookSecret(kek: Buffer, webhookId: string, sealed: Uint8Array): string {
  return unseal(kek, keyIdOf(webhookId), sealed).toString("utf8");
}

/** The secret columns of a webhooks row. */
export interface SealedSecrets {
  id: string;
  secret_sealed: Uint8Array;
  previous_secret_sealed: Uint8Array | null;
  previous_secret_expire_time: Date | null;
}

/**
 * Every secret that signs a delivery sent at `now`: the current one first, then the previous one
 * while its overlap lasts. Standard Webhooks receivers accept a signature made with any secret
 * they hold, so during a rotation both old and new receivers verify.
 */
export function signingSecretsOf(kek: Buffer, row: SealedSecrets, now: Date = new Date()): string[] {
  const secrets = [unsealWebhookSecret(kek, row.id, row.secret_sealed)];
  if (row.previous_secret_sealed && row.previous_secret_expire_time && row.previous_secret_expire_time > now) {
    secrets.push(unsealWebhookSecret(kek, row.id, row.previous_secret_sealed));
  }
  return secrets;
}

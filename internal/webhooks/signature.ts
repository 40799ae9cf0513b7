/**
 * Standard Webhooks signatures (https://www.standardwebhooks.com): `v1,<base64 HMAC-SHA256>` of
 * `${webhook-id}.${webhook-timestamp}.${body}` under the secret's bytes, one signature per valid
 * secret, space-separated, so a receiver part-way through a rotation verifies with either.
 */
import { createHmac } from "node:crypto";

const secretPrefix = "whsec_";

/** The key bytes of a `whsec_…` secret (the prefix is optional, as in the Standard Webhooks libraries). */
export function secretKeyBytes(secret: string): Buffer {
  return Buffer.from(secret.startsWith(secretPrefix) ? secret.slice(secretPrefix.length) : secret, "base64");
}

/** One `v1,<base64>` signature of the message under one secret. */
export function signOne(secret: string, id: string, timestampSeconds: number, body: string): string {
  const mac = createHmac("sha256", secretKeyBytes(secret)).update(`${id}.${timestampSeconds}.${body}`).digest("base64");
  return `v1,${mac}`;
}

/** The webhook-signature header: a signature per secret (current first), space-separated. */
export function signatureHeader(secrets: readonly string[], id: string, timestampSeconds: number, body: string): string {
  return secrets.map((s) => signOne(s, id, timestampSeconds, body)).join(" ");
}

/** The three Standard Webhooks headers and the content type of a delivery. */
export function signedHeaders(secrets: readonly string[], id: string, body: string, now: Date = new Date()): Record<string, string> {
  const timestamp = Math.floor(now.getTime() / 1000);
  return {
    "content-type": "application/json",
    "webhook-id": id,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": signatureHeader(secrets, id, timestamp, body),
  };
}

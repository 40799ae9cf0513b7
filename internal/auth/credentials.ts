/**
 * How a request presents a credential, read from its headers alone: a bearer token, or an API
 * key (in `x-api-key` or as the bearer). Transport-free, so the services' identity interceptor
 * and the Deno gateway tell the two apart the same way.
 */
import { InvalidTokenError } from "./errors.ts";

/** The shape of an API key secret, `jmk_<prefix>_<secret>`: fixed so secret scanners recognise it. */
export const apiKeyPattern = /^jmk_[a-z0-9]{8}_[A-Za-z0-9]{43}$/;

/**
 * An API key's public prefix ("jmk_ab12cd34", as ListApiKeys shows it), never more of the
 * secret; "malformed" for what is not a key. The hint the audit log names a key by, written the
 * same by the services' identity, AuthService's ExchangeApiKey and the gateway.
 */
export function apiKeyHintOf(secret: string): string {
  return apiKeyPattern.test(secret) ? secret.slice(0, "jmk_".length + 8) : "malformed";
}

/** A credential as presented, not yet verified. */
export interface PresentedCredential {
  kind: "token" | "api_key";
  value: string;
}

/**
 * The credential a request carries, or undefined when it carries none. An `authorization`
 * header that is not `Bearer <one value>` is refused rather than ignored, so a client that meant
 * to authenticate is told so instead of being served as anonymous.
 */
export function credentialOf(header: Headers): PresentedCredential | undefined {
  const authorization = header.get("authorization");
  if (authorization !== null) {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (!match) throw new InvalidTokenError("authorization header");
    return { kind: apiKeyPattern.test(match[1]) ? "api_key" : "token", value: match[1] };
  }
  const apiKey = header.get("x-api-key");
  if (apiKey !== null) return { kind: "api_key", value: apiKey.trim() };
  return undefined;
}

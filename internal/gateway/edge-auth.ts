/**
 * Who is calling, decided at the edge before any backend is called: a bearer access token is
 * verified here against the JWKS (token-verifier.ts, the services' own verifier), an API key is
 * asked of AuthService and its identity cached for a few seconds. Then the method's access rule
 * is checked with the contract's decide(), as every service checks it again.
 *
 * The edge may only ever refuse less than a service would: it knows the roles a token or key
 * carries, not whether its user was disabled or demoted a moment ago, nor whether its key was
 * revoked within the cache's seconds. Those the services refuse on the same call.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { apiKeyPattern, credentialOf } from "../auth/credentials.ts";
import { InvalidTokenError, MissingPermissionError, NoCredentialsError } from "../auth/errors.ts";
import type { TokenVerifier } from "../auth/token-verifier.ts";
import { decide, type AccessRule } from "../contract/index.ts";
import { UnauthenticatedError } from "../errors/index.ts";

/** The caller of one request, as the edge knows it. */
export interface EdgeCaller {
  tenantId: string;
  /** "users/{id}" or "apiKeys/{id}". */
  subject: string;
  roles: string[];
  /** What per-credential limits count on: the token's subject+session, or the API key's name; never the secret. */
  credentialKey: string;
}

export interface EdgeAuth {
  /**
   * The caller the headers name, or undefined when they present no credential. A bad, expired or
   * revoked one throws ConnectError UNAUTHENTICATED with the services' message for it.
   */
  authenticate(headers: Headers): Promise<EdgeCaller | undefined>;
}

/** An API key's identity as AuthService's GetCurrentIdentity answers it. */
export interface ApiKeyIdentity {
  tenantId: string;
  subject: string;
  roles: string[];
}

export interface EdgeAuthDeps {
  /** createTokenVerifier({ loadJwks, issuer, audience }): JWKS cached, reloaded on an unknown kid at most once a second. */
  verifier: TokenVerifier;
  /** Asks AuthService who an API key is (GetCurrentIdentity with x-api-key). Throws ConnectError as AuthService answered. */
  identifyApiKey(secret: string): Promise<ApiKeyIdentity>;
  /** Seconds an API key's identity is cached (JOBMESH_API_KEY_CACHE_SECONDS); never more than 5, the services' rule. */
  apiKeyCacheSeconds: number;
  /** Clock in milliseconds, for the cache; Date.now by default. */
  now?: () => number;
  /** API key identities kept at most; the least recently used goes first. Default 10 000. */
  maxCachedApiKeys?: number;
}

/** The longest an identity is trusted without asking again, whatever the configuration says. */
const maxApiKeyCacheSeconds = 5;

export function createEdgeAuth(deps: EdgeAuthDeps): EdgeAuth {
  const now = deps.now ?? Date.now;
  const ttlMs = Math.min(deps.apiKeyCacheSeconds, maxApiKeyCacheSeconds) * 1000;
  const maxCached = deps.maxCachedApiKeys ?? 10_000;
  // Keyed by the secret's SHA-256, so the process holds no secret beyond the call presenting it.
  // A Map iterates in insertion order: a hit is moved to the end, so the first key is the least
  // recently used one and goes when the cache is full.
  const cached = new Map<string, { identity: ApiKeyIdentity; expiresAt: number }>();
  // One question to AuthService per key at a time: a burst of calls with a new key waits for the
  // first answer instead of sending the burst on. A refusal is shared by those waiting, never cached.
  const asking = new Map<string, Promise<ApiKeyIdentity>>();

  async function identityOfApiKey(secret: string): Promise<ApiKeyIdentity> {
    // The shape is checked first, as the services check it: junk costs no call to AuthService.
    if (!apiKeyPattern.test(secret)) throw new InvalidTokenError("API key");
    const key = await sha256Hex(secret);
    const hit = cached.get(key);
    if (hit) {
      cached.delete(key);
      if (hit.expiresAt > now()) {
        cached.set(key, hit);
        return hit.identity;
      }
    }
    let pending = asking.get(key);
    if (!pending) {
      pending = (async () => {
        try {
          const identity = await deps.identifyApiKey(secret);
          if (ttlMs > 0) {
            if (cached.size >= maxCached) cached.delete(cached.keys().next().value!);
            cached.set(key, { identity, expiresAt: now() + ttlMs });
          }
          return identity;
        } finally {
          asking.delete(key);
        }
      })();
      asking.set(key, pending);
    }
    return pending;
  }

  return {
    async authenticate(headers) {
      try {
        const presented = credentialOf(headers);
        if (!presented) return undefined;
        if (presented.kind === "api_key") {
          const who = await identityOfApiKey(presented.value);
          return { tenantId: who.tenantId, subject: who.subject, roles: who.roles, credentialKey: `${who.tenantId}:${who.subject}` };
        }
        const who = await deps.verifier.verify(presented.value);
        // A user's tokens share one budget per session epoch (a new login does not buy a fresh
        // bucket); a token exchanged from an API key counts on that key, like the key itself.
        const session = who.sessionEpoch === undefined ? "" : `:${who.sessionEpoch}`;
        return { tenantId: who.tenantId, subject: who.subject, roles: who.roles, credentialKey: `${who.tenantId}:${who.subject}${session}` };
      } catch (error) {
        throw asConnectError(error);
      }
    },
  };
}

/**
 * Checks the method's access rule before any backend is called: no caller on a method that is
 * not public is UNAUTHENTICATED, roles without the permission PERMISSION_DENIED (naming it).
 */
export function authorizeAtEdge(rule: AccessRule, caller: EdgeCaller | undefined): void {
  switch (decide(rule, caller?.roles)) {
    case "allow":
      return;
    case "unauthenticated":
      throw asConnectError(new NoCredentialsError());
    case "permission_denied":
      throw new ConnectError(new MissingPermissionError(rule.kind === "permission" ? rule.permission : "").message, Code.PermissionDenied);
  }
}

/** The services' unauthenticated errors keep their message; anything else (a ConnectError from AuthService) passes as it is. */
function asConnectError(error: unknown): unknown {
  if (error instanceof UnauthenticatedError) return new ConnectError(error.message, Code.Unauthenticated, undefined, undefined, error);
  return error;
}

async function sha256Hex(text: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

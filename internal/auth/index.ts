/**
 * Identity for jobmesh: users and passwords, sessions with rotating refresh tokens, API keys,
 * signing keys and the JWKS, login rate limits, and the role table every service decides with.
 * Transport-free: internal/auth/service.ts serves it, internal/rpc/identity.ts enforces it.
 */
import type { JWK } from "jose";
import type { Cache } from "../cache/index.ts";
import type { AuthConfig } from "../config/index.ts";
import type { Pool } from "../db/index.ts";
import type { PageTokens } from "../paging/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { createApiKeys } from "./api-keys.ts";
import { InvalidCredentialsError } from "./errors.ts";
import { createLoginLimits } from "./login-limits.ts";
import { createPasswordChanges } from "./password-changes.ts";
import { createPasswordChecker } from "./passwords.ts";
import { createSessions } from "./sessions.ts";
import { createSigningKeys, loadKeyEncryptionKey, loadPublicJwks } from "./signing-keys.ts";
import { createTokenIssuer } from "./tokens.ts";
import { createUserStatus } from "./user-status.ts";
import { createUsers, selectUsersByEmail, type UserFields } from "./users.ts";

export { ensureAdmin, type BootstrapAdmin } from "./bootstrap.ts";
export { createApiKeys, rootUserOf, type ApiKeyChain, type ApiKeyIdentity, type ApiKeys } from "./api-keys.ts";
export { apiKeyPattern, credentialOf, type PresentedCredential } from "./credentials.ts";
export * from "./errors.ts";
export { loadPublicJwks } from "./signing-keys.ts";
export { createTokenVerifier, jwksOf, type TokenVerifier, type VerifiedToken } from "./token-verifier.ts";
export { createUserStatus, type UserStanding, type UserStatus } from "./user-status.ts";

export interface AuthDomainDeps {
  db: Pool;
  cache: Cache;
  pageTokens: PageTokens;
  log: Logger;
  config: AuthConfig;
}

export async function createAuthDomain(deps: AuthDomainDeps) {
  const { db, config, log } = deps;
  const keys = createSigningKeys({
    db,
    keyEncryptionKey: await loadKeyEncryptionKey(config.keyEncryptionKey, config.signingKeyDir),
    rotationSeconds: config.signingKeyRotationSeconds,
  });
  const issuer = createTokenIssuer({ keys, issuer: config.issuer, audience: config.audience, ttlSeconds: config.accessTokenTtlSeconds });
  const passwords = await createPasswordChecker();
  const users = createUsers(deps);
  const userStatus = createUserStatus({ db, cache: deps.cache, cacheSeconds: config.apiKeyCacheSeconds });
  const sessions = createSessions({
    db,
    issuer,
    refreshTokenTtlSeconds: config.refreshTokenTtlSeconds,
    sessionMaxAgeSeconds: config.sessionMaxAgeSeconds,
    onReuse: (who) => log.warn({ tenant: who.tenantId, user: who.userId, family: who.familyId }, "spent refresh token presented again; session revoked"),
  });
  const apiKeys = createApiKeys({ db, cache: deps.cache, pageTokens: deps.pageTokens, log, cacheSeconds: config.apiKeyCacheSeconds });
  const limits = createLoginLimits({
    cache: deps.cache,
    maxFailuresPerAccount: config.loginMaxFailuresPerAccount,
    maxFailuresPerIp: config.loginMaxFailuresPerIp,
    windowSeconds: config.loginWindowSeconds,
  });
  const passwordChanges = createPasswordChanges({ db, passwords, sessions, userStatus, limits });
  // The first key is made now, not by the first login, so the JWKS is never empty.
  await keys.current();

  return {
    keys,
    users,
    sessions,
    apiKeys,
    passwordChanges,
    /** The public keys of the JWKS. */
    jwks: (): Promise<JWK[]> => loadPublicJwks(db, config.accessTokenTtlSeconds),

    /** Email + password → a session. Every failure looks alike and costs the same. */
    async login(email: string, password: string, tenant: string, clientAddress: string | undefined) {
      const found = await selectUsersByEmail(db, email, tenant);
      // An email with accounts in several tenants and no tenant named is answered like a wrong
      // password, after the same Argon2id work: neither the answer nor its timing says it exists.
      const user = found.length === 1 ? found[0] : undefined;
      // Counted on the tenant the selector resolved to, so "", the slug and the id share one budget.
      const reservation = await limits.reserve(user?.tenant_id ?? "", email, clientAddress);
      const matches = await passwords.check(user?.password_hash, password);
      if (!user || !matches || user.disabled) throw new InvalidCredentialsError();
      await reservation.release();
      await users.recordLogin(user.tenant_id, user.user_id);
      return sessions.start(user);
    },

    /**
     * An access token acting as the key, never outliving it (or any key above it). Decided on
     * Postgres, not the caches, so a key revoked a moment ago never mints a token.
     */
    async exchangeApiKey(secret: string) {
      const identity = await apiKeys.verifyNow(secret);
      return issuer.issue(identity, identity.expireTime);
    },

    /**
     * Updates a user; disabling one ends its sessions and its access tokens, and new roles apply
     * to the access tokens it holds (capped at the new roles, never raised).
     */
    async updateUser(tenantId: string, name: string, etag: string, mask: readonly string[], fields: Omit<UserFields, "email">) {
      const { row, disabledNow, rolesChanged } = await users.update(tenantId, name, etag, mask, fields);
      if (disabledNow) await sessions.revokeAll(tenantId, row.user_id);
      if (disabledNow || rolesChanged) await userStatus.forget(tenantId, row.user_id);
      return row;
    },

    /** Deletes a user with its sessions and access tokens, and revokes the API keys of every chain it started. */
    async deleteUser(tenantId: string, name: string, etag: string) {
      await users.delete(tenantId, name, etag);
      await userStatus.forget(tenantId, name.replace(/^users\//, ""));
      await apiKeys.revokeByRoot(tenantId, name);
    },
  };
}

export type AuthDomain = Awaited<ReturnType<typeof createAuthDomain>>;

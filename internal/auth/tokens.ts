/**
 * Access tokens: JWTs (RFC 9068 profile, `typ: at+jwt`) signed with the current signing key.
 * Verifying them lives in token-verifier.ts (no Postgres, so the Deno gateway loads it too);
 * it is re-exported here so callers of either half keep one import.
 */
import { SignJWT } from "jose";
import { randomUUID } from "node:crypto";
import type { SigningKeys } from "./signing-keys.ts";
import { accessTokenType, signingAlg, type TokenSubject } from "./token-verifier.ts";

export {
  accessTokenType,
  createTokenVerifier,
  signingAlg,
  tokenClockToleranceSeconds,
  type TokenSubject,
  type TokenVerifier,
  type TokenVerifierDeps,
  type VerifiedToken,
} from "./token-verifier.ts";

export interface TokenIssuerDeps {
  keys: SigningKeys;
  issuer: string;
  audience: string;
  ttlSeconds: number;
}

export interface IssuedToken {
  token: string;
  expireTime: Date;
}

export function createTokenIssuer(deps: TokenIssuerDeps) {
  return {
    /** Signs an access token; it never outlives `notAfter` (an API key's expiry). */
    async issue(who: TokenSubject, notAfter?: Date | null): Promise<IssuedToken> {
      const key = await deps.keys.current();
      const now = Math.floor(Date.now() / 1000);
      let exp = now + deps.ttlSeconds;
      if (notAfter) exp = Math.min(exp, Math.floor(notAfter.getTime() / 1000));
      const claims: Record<string, unknown> = { tenant: who.tenantId, roles: who.roles };
      if (who.sessionEpoch !== undefined) claims.session_epoch = who.sessionEpoch;
      const token = await new SignJWT(claims)
        .setProtectedHeader({ alg: signingAlg, kid: key.kid, typ: accessTokenType })
        .setIssuer(deps.issuer)
        .setAudience(deps.audience)
        .setSubject(who.subject)
        .setIssuedAt(now)
        .setNotBefore(now)
        .setExpirationTime(exp)
        .setJti(randomUUID())
        .sign(key.privateKey);
      return { token, expireTime: new Date(exp * 1000) };
    },
  };
}

export type TokenIssuer = ReturnType<typeof createTokenIssuer>;


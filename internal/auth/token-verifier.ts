/**
 * Verifying access tokens, apart from issuing them, so that a verifier (a service in another
 * process, the Deno gateway) loads only jose and the named errors: no Postgres, no signing keys.
 * Verification follows RFC 8725: one allowed algorithm (never "none", never a MAC keyed with a
 * public key), the key chosen by `kid` from our JWKS only, and `iss`, `aud`, `exp`, `nbf` and the
 * jobmesh claims all checked, with a few seconds of tolerance for clocks that differ between the
 * signer and a verifier (tokenClockToleranceSeconds).
 */
import { decodeProtectedHeader, importJWK, jwtVerify, type CryptoKey, type JWK } from "jose";
import { InvalidTokenError } from "./errors.ts";

/** The one algorithm access tokens are signed with (Ed25519); signing-keys.ts makes keys for it. */
export const signingAlg = "EdDSA";

export const accessTokenType = "at+jwt";

/**
 * Seconds a verifier's clock may differ from the signer's before `nbf`/`exp` refuse a token:
 * replicas on different hosts are never exactly in step, and without it a token was refused by
 * a verifier a fraction of a second behind the signer. Small, so an expired token is not stretched.
 */
export const tokenClockToleranceSeconds = 5;

/** Who a token speaks for. */
export interface TokenSubject {
  /** "users/{id}" or "apiKeys/{id}". */
  subject: string;
  tenantId: string;
  roles: string[];
  /**
   * A user's session epoch when the token was issued (users only): a password change or reset
   * bumps the user's, and tokens of an earlier epoch are refused (rpc/identity.ts).
   */
  sessionEpoch?: number;
}

export interface VerifiedToken extends TokenSubject {
  expireTime: Date;
  tokenId: string;
}

export interface TokenVerifierDeps {
  /** Fetches the current JWKS keys (from Postgres in process, or from AuthService). */
  loadJwks(): Promise<JWK[]>;
  issuer: string;
  audience: string;
  /** How long a loaded JWKS is trusted before it is loaded again. Default 5 minutes. */
  maxAgeMs?: number;
  /** Least time between two loads caused by unknown `kid`s, so forged kids cannot flood the source. Default 1 s. */
  minReloadGapMs?: number;
  /** Verified tokens remembered (until they expire) so a client's next call skips the signature check. Default 10 000. */
  rememberedTokens?: number;
}

/** A JWKS key as GetJwks answers it (jobmesh.v1.Jwk: empty strings for members it does not have). */
export interface PublishedJwk {
  kty: string;
  crv: string;
  x: string;
  y: string;
  kid: string;
  alg: string;
  use: string;
}

/** GetJwks's keys as the JWKs a verifier loads (an empty `y`, as an OKP key has, left out). */
export function jwksOf(keys: readonly PublishedJwk[]): JWK[] {
  return keys.map((k) => ({ kty: k.kty, crv: k.crv, x: k.x, ...(k.y ? { y: k.y } : {}), kid: k.kid, alg: k.alg, use: k.use }));
}

export interface TokenVerifier {
  verify(token: string): Promise<VerifiedToken>;
}

export function createTokenVerifier(deps: TokenVerifierDeps): TokenVerifier {
  const maxAgeMs = deps.maxAgeMs ?? 300_000;
  const minReloadGapMs = deps.minReloadGapMs ?? 1_000;
  let keys = new Map<string, CryptoKey>();
  let loadedAt = 0;
  let loading: Promise<void> | undefined;
  // The same token string verifies the same way until it expires (a retired key stays in the
  // JWKS until then), so a verified token is remembered; a tampered one is a different string.
  const remembered = new Map<string, VerifiedToken>();
  const maxRemembered = deps.rememberedTokens ?? 10_000;
  function remember(token: string, verified: VerifiedToken) {
    if (remembered.size >= maxRemembered) remembered.delete(remembered.keys().next().value!);
    remembered.set(token, verified);
  }

  function reload(): Promise<void> {
    loading ??= (async () => {
      try {
        const next = new Map<string, CryptoKey>();
        for (const jwk of await deps.loadJwks()) {
          if (jwk.kid && jwk.alg === signingAlg) next.set(jwk.kid, (await importJWK(jwk, signingAlg)) as CryptoKey);
        }
        keys = next;
        loadedAt = Date.now();
      } finally {
        loading = undefined;
      }
    })();
    return loading;
  }

  // When a load last failed: until the reload gap has passed, no call starts another (a token
  // with a forged kid must not turn a struggling JWKS source into a load per request).
  let failedAt = -Infinity;
  async function keyFor(kid: string): Promise<CryptoKey | undefined> {
    const age = Date.now() - loadedAt;
    const due = age > maxAgeMs || (!keys.has(kid) && age > minReloadGapMs);
    if (due && Date.now() - failedAt > minReloadGapMs) {
      try {
        await reload();
      } catch (error) {
        failedAt = Date.now();
        // A JWKS source that is down does not void the keys already here: a known key goes on
        // verifying (it stays published until every token it signed has expired).
        if (!keys.has(kid)) throw error;
      }
    }
    return keys.get(kid);
  }

  return {
    async verify(token) {
      const known = remembered.get(token);
      if (known) {
        if (known.expireTime.getTime() > Date.now()) return known;
        remembered.delete(token);
      }
      let kid: string | undefined;
      try {
        const header = decodeProtectedHeader(token);
        if (header.alg !== signingAlg || typeof header.kid !== "string") throw new Error(`unexpected header alg=${String(header.alg)}`);
        kid = header.kid;
      } catch (error) {
        throw new InvalidTokenError("access token", { cause: error });
      }
      const key = await keyFor(kid);
      if (!key) throw new InvalidTokenError("access token", { cause: new Error(`unknown kid ${kid}`) });
      try {
        const { payload } = await jwtVerify(token, key, {
          algorithms: [signingAlg],
          issuer: deps.issuer,
          audience: deps.audience,
          typ: accessTokenType,
          clockTolerance: tokenClockToleranceSeconds,
          requiredClaims: ["sub", "exp", "nbf", "jti", "tenant", "roles"],
        });
        const { tenant, roles, session_epoch: sessionEpoch } = payload as { tenant?: unknown; roles?: unknown; session_epoch?: unknown };
        if (typeof tenant !== "string" || tenant === "") throw new Error("tenant claim is not a string");
        if (!Array.isArray(roles) || !roles.every((r) => typeof r === "string")) throw new Error("roles claim is not a list of strings");
        if (sessionEpoch !== undefined && !Number.isSafeInteger(sessionEpoch)) throw new Error("session_epoch claim is not an integer");
        const verified: VerifiedToken = { subject: payload.sub!, tenantId: tenant, roles: roles as string[], expireTime: new Date(payload.exp! * 1000), tokenId: payload.jti! };
        // A user's token without the claim predates epochs: it belongs to epoch 0.
        if (payload.sub!.startsWith("users/")) verified.sessionEpoch = (sessionEpoch as number | undefined) ?? 0;
        remember(token, verified);
        return verified;
      } catch (error) {
        throw new InvalidTokenError("access token", { cause: error });
      }
    },
  };
}

/**
 * Keys that sign access tokens: Ed25519 (JWS "EdDSA"), stored in Postgres with the private half
 * sealed by AES-256-GCM under a key-encryption key that never enters the database
 * (JOBMESH_KEY_ENCRYPTION_KEY, or a 0600 key file under the signing key directory).
 *
 * Rotation keeps an overlap: a retired key signs nothing new but stays in the JWKS for an
 * access-token lifetime (plus clock skew), so every token it signed verifies until it expires.
 */
import { exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWK } from "jose";
import { randomUUID } from "node:crypto";
import { inTransaction, type Pool, type Queryable } from "../db/index.ts";
import { loadKeyEncryptionKey, seal, unseal } from "../sealing/index.ts";
import { signingAlg } from "./token-verifier.ts";

export { signingAlg };
// Where the services have always found it; it lives in internal/sealing with seal/unseal.
export { loadKeyEncryptionKey };
/** Tolerated clock difference between the signer and a verifier. */
export const clockSkewSeconds = 60;

export interface SigningKey {
  kid: string;
  privateKey: CryptoKey;
}

/** The public keys that verify tokens still valid: the current key and those retired less than a token lifetime ago. */
export async function loadPublicJwks(db: Queryable, accessTokenTtlSeconds: number): Promise<JWK[]> {
  const { rows } = await db.query<{ public_jwk: JWK }>(
    `SELECT public_jwk FROM signing_keys
     WHERE retire_time IS NULL OR retire_time > now() - make_interval(secs => $1)
     ORDER BY create_time DESC`,
    [accessTokenTtlSeconds + clockSkewSeconds],
  );
  return rows.map((r) => r.public_jwk);
}

export interface SigningKeysDeps {
  db: Pool;
  keyEncryptionKey: Buffer;
  rotationSeconds: number;
}

export interface SigningKeys {
  /** The key to sign with now; creates the first key, or rotates one older than the rotation period. */
  current(): Promise<SigningKey>;
  /** Retires the current key and makes a new one; returns the new kid. */
  rotate(): Promise<string>;
}

export function createSigningKeys(deps: SigningKeysDeps): SigningKeys {
  const { db } = deps;
  let cached: { key: SigningKey; checkedAt: number } | undefined;

  async function insertNewKey(tx: Queryable): Promise<void> {
    const kid = randomUUID();
    const { publicKey, privateKey } = await generateKeyPair(signingAlg, { crv: "Ed25519", extractable: true });
    const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: signingAlg, use: "sig" };
    const sealed = seal(deps.keyEncryptionKey, kid, JSON.stringify(await exportJWK(privateKey)));
    await tx.query("UPDATE signing_keys SET retire_time = now() WHERE retire_time IS NULL");
    await tx.query("INSERT INTO signing_keys (kid, alg, public_jwk, private_jwk_sealed) VALUES ($1, $2, $3, $4)", [kid, signingAlg, publicJwk, sealed]);
  }

  async function readCurrent(): Promise<{ kid: string; sealed: Buffer; stale: boolean } | undefined> {
    const { rows } = await db.query<{ kid: string; private_jwk_sealed: Buffer; stale: boolean }>(
      `SELECT kid, private_jwk_sealed, create_time < now() - make_interval(secs => $1) AS stale
       FROM signing_keys WHERE retire_time IS NULL ORDER BY create_time DESC LIMIT 1`,
      [deps.rotationSeconds],
    );
    return rows[0] ? { kid: rows[0].kid, sealed: rows[0].private_jwk_sealed, stale: rows[0].stale } : undefined;
  }

  // One replica creates or rotates at a time; the others wait on the lock and then find its key.
  const lockedRotation = (force: boolean) =>
    inTransaction(db, async (tx) => {
      await tx.query("SELECT pg_advisory_xact_lock(hashtext('jobmesh.signing_keys'))");
      const { rows } = await tx.query<{ stale: boolean }>(
        `SELECT create_time < now() - make_interval(secs => $1) AS stale FROM signing_keys WHERE retire_time IS NULL LIMIT 1`,
        [deps.rotationSeconds],
      );
      if (force || rows.length === 0 || rows[0].stale) await insertNewKey(tx);
    });

  async function load(): Promise<SigningKey> {
    let row = await readCurrent();
    if (!row || row.stale) {
      await lockedRotation(false);
      row = (await readCurrent())!;
    }
    const privateKey = (await importJWK(JSON.parse(unseal(deps.keyEncryptionKey, row.kid, row.sealed).toString("utf8")) as JWK, signingAlg)) as CryptoKey;
    return { kid: row.kid, privateKey };
  }

  return {
    async current() {
      // Re-read at most once a minute: a rotation by another replica is picked up within that.
      if (cached && Date.now() - cached.checkedAt < 60_000) return cached.key;
      const key = await load();
      cached = { key, checkedAt: Date.now() };
      return key;
    },
    async rotate() {
      await lockedRotation(true);
      cached = undefined;
      return (await this.current()).kid;
    },
  };
}

/**
 * The Ed25519 key that signs the audit checkpoints. Its private half is sealed (AES-256-GCM
 * under the key-encryption key, internal/sealing) and never stored in clear; a key row whose
 * sealed half does not unseal under our key-encryption key to the private key of its public key
 * is not trusted (a superuser can insert a row, not seal under a key Postgres never sees).
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from "node:crypto";
import { inTransaction, type Pool, type Queryable } from "../db/index.ts";
import { seal, unseal } from "../sealing/index.ts";
import { auditKeyIdOf } from "./chain-hash.ts";

/** The key that signs checkpoints. */
export interface AuditKey {
  keyId: string;
  /** Raw 32-byte Ed25519 public key. */
  publicKey: Uint8Array;
  privateKey: KeyObject;
  createTime: Date;
}

interface KeyRow {
  key_id: string;
  public_key: Buffer;
  private_key_sealed: Buffer;
  create_time: Date;
}

const rawPublicOf = (key: KeyObject) => new Uint8Array(Buffer.from(createPublicKey(key).export({ format: "jwk" }).x!, "base64url"));

/** The key a row holds, when its sealed private key unseals under `kek` and matches its public key and id. */
function trustedKeyOf(row: KeyRow, kek: Buffer): AuditKey | undefined {
  try {
    const privateKey = createPrivateKey({ key: unseal(kek, row.key_id, row.private_key_sealed), format: "der", type: "pkcs8" });
    const publicKey = rawPublicOf(privateKey);
    if (!Buffer.from(publicKey).equals(row.public_key) || auditKeyIdOf(publicKey) !== row.key_id) return undefined;
    return { keyId: row.key_id, publicKey, privateKey, createTime: row.create_time };
  } catch {
    return undefined;
  }
}

async function trustedKeys(db: Queryable, keyEncryptionKey: Buffer): Promise<AuditKey[]> {
  const { rows } = await db.query<KeyRow>("SELECT key_id, public_key, private_key_sealed, create_time FROM audit_signing_keys ORDER BY create_time DESC, key_id");
  return rows.flatMap((row) => trustedKeyOf(row, keyEncryptionKey) ?? []);
}

/** The public keys (raw Ed25519, by key id) of the key rows that are trusted under `keyEncryptionKey`. */
export async function trustedPublicKeys(db: Queryable, keyEncryptionKey: Buffer): Promise<Map<string, Uint8Array>> {
  return new Map((await trustedKeys(db, keyEncryptionKey)).map((k) => [k.keyId, k.publicKey]));
}

/** The trusted keys with their creation times, newest first (what an export lists). */
export async function trustedSigningKeys(db: Queryable, keyEncryptionKey: Buffer): Promise<Omit<AuditKey, "privateKey">[]> {
  return (await trustedKeys(db, keyEncryptionKey)).map(({ keyId, publicKey, createTime }) => ({ keyId, publicKey, createTime }));
}

/** The newest trusted signing key, made (and its private half sealed) when there is none. */
export async function loadAuditSigningKey(deps: { db: Pool; keyEncryptionKey: Buffer }): Promise<AuditKey> {
  return inTransaction(deps.db, async (tx) => {
    // Two stores starting at once make one key between them.
    await tx.query("SELECT pg_advisory_xact_lock(hashtext('jobmesh.audit_signing_keys'))");
    const [current] = await trustedKeys(tx, deps.keyEncryptionKey);
    if (current) return current;
    const { privateKey } = generateKeyPairSync("ed25519");
    const publicKey = rawPublicOf(privateKey);
    const keyId = auditKeyIdOf(publicKey);
    const sealed = seal(deps.keyEncryptionKey, keyId, privateKey.export({ format: "der", type: "pkcs8" }));
    const { rows } = await tx.query<{ create_time: Date }>(
      "INSERT INTO audit_signing_keys (key_id, public_key, private_key_sealed) VALUES ($1, $2, $3) RETURNING create_time",
      [keyId, Buffer.from(publicKey), sealed],
    );
    return { keyId, publicKey, privateKey, createTime: rows[0].create_time };
  });
}

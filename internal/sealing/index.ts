/**
 * Sealing of secrets kept in Postgres (the JWT signing keys, the audit checkpoint key): AES-256-GCM
 * under a key-encryption key that never enters the database (JOBMESH_KEY_ENCRYPTION_KEY, or a
 * 0600 key file under the signing key directory). A sealed value is iv (12) || tag (16) || body;
 * the row's key id is the additional authenticated data, so a sealed value moved to another row
 * does not unseal.
 */
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import { link, mkdir, readFile, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";

/** Reads the key-encryption key from configuration, or from (creating) a key file. */
export async function loadKeyEncryptionKey(configured: string, keyDir: string): Promise<Buffer> {
  if (configured) return Buffer.from(configured, "base64");
  const file = join(keyDir, "key-encryption-key");
  try {
    return Buffer.from((await readFile(file, "utf8")).trim(), "base64");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  await mkdir(keyDir, { recursive: true, mode: 0o700 });
  // Written aside and linked into place: a process starting at the same moment never reads a
  // half-written file, and link() refuses to replace a key another process put there first.
  const draft = `${file}.${process.pid}.${randomBytes(4).toString("hex")}`;
  await writeFile(draft, randomBytes(32).toString("base64") + "\n", { mode: 0o600 });
  try {
    await link(draft, file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  } finally {
    await unlink(draft);
  }
  return Buffer.from((await readFile(file, "utf8")).trim(), "base64");
}

/** Encrypts `plaintext` (a string is taken as UTF-8) under the key-encryption key, bound to `keyId`. */
export function seal(kek: Buffer, keyId: string, plaintext: string | Uint8Array): Buffer {
  const iv = randomBytes(12);
  const cipher = createCipheriv("aes-256-gcm", kek, iv);
  cipher.setAAD(Buffer.from(keyId));
  const body = Buffer.concat([typeof plaintext === "string" ? cipher.update(plaintext, "utf8") : cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([iv, cipher.getAuthTag(), body]);
}

/** Decrypts what seal() made for the same key id; throws when the key, the key id or a byte differs. */
export function unseal(kek: Buffer, keyId: string, sealed: Uint8Array): Buffer {
  const bytes = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  const decipher = createDecipheriv("aes-256-gcm", kek, bytes.subarray(0, 12));
  decipher.setAAD(Buffer.from(keyId));
  decipher.setAuthTag(bytes.subarray(12, 28));
  return Buffer.concat([decipher.update(bytes.subarray(28)), decipher.final()]);
}

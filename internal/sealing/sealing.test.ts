import t from "tap";
import { mkdtemp, readdir, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadKeyEncryptionKey, seal, unseal } from "./index.ts";

void t.test("key-encryption key file - processes starting at once all get the one key, kept 0600", async (t) => {
  const dir = join(await mkdtemp(join(tmpdir(), "jobmesh-kek-")), "keys");
  const keys = await Promise.all(Array.from({ length: 16 }, () => loadKeyEncryptionKey("", dir)));
  t.equal(new Set(keys.map((k) => k.toString("hex"))).size, 1);
  t.equal(keys[0].length, 32);
  t.same(await readdir(dir), ["key-encryption-key"], "no drafts left behind");
  t.equal((await stat(join(dir, "key-encryption-key"))).mode & 0o777, 0o600);
});

void t.test("key-encryption key - a configured key wins over the file", async (t) => {
  const configured = Buffer.alloc(32, 7).toString("base64");
  t.same(await loadKeyEncryptionKey(configured, "/nonexistent"), Buffer.alloc(32, 7));
});

void t.test("seal - unseals under the same key and key id only; a flipped byte is refused", async (t) => {
  const kek = Buffer.alloc(32, 3);
  const secret = Buffer.from("a private key, 32 bytes long....");
  const sealed = seal(kek, "key-a", secret);
  t.notOk(sealed.includes(secret), "the plaintext is not in the sealed bytes");
  t.same(unseal(kek, "key-a", sealed), secret);
  t.equal(unseal(kek, "key-a", seal(kek, "key-a", "text")).toString("utf8"), "text");
  t.throws(() => unseal(kek, "key-b", sealed), "another key id (the sealed value moved to another row)");
  t.throws(() => unseal(Buffer.alloc(32, 4), "key-a", sealed), "another key-encryption key");
  const flipped = Buffer.from(sealed);
  flipped[flipped.length - 1] ^= 1;
  t.throws(() => unseal(kek, "key-a", flipped), "a flipped byte");
});

import t from "tap";
import { mkdtemp, readdir, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadKeyEncryptionKey } from "./signing-keys.ts";

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

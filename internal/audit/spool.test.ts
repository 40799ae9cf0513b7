// The audit spool file: records come back in the order appended, a torn last record (a crash
// mid-append) is dropped and appends go on after the last whole record, truncate empties it;
// the lock gives one live process per file and hands a dead owner's file to the next claimer.
import t from "tap";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { appendFile, mkdtemp, readFile, rm, stat, truncate, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { claimOrphanSpools, claimSpoolFile, crc32, maxSpoolRecordBytes, openSpool, SpoolRecordTooLargeError } from "./spool.ts";

const dir = await mkdtemp(join(tmpdir(), "jobmesh-spool-test-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));
const text = new TextEncoder();
const payload = (i: number) => text.encode(`event number ${i} `.repeat(1 + (i % 7)));
const decoded = (payloads: Uint8Array[]) => payloads.map((p) => new TextDecoder().decode(p));

/** A pid no process has: a child that has exited (and been reaped). */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  await once(child, "exit");
  return child.pid!;
}

void t.test("crc32 - the IEEE check value of zlib", async (t) => {
  t.equal(crc32(text.encode("123456789")), 0xcbf43926);
  t.equal(crc32(new Uint8Array()), 0);
  t.equal(crc32(text.encode("56789"), crc32(text.encode("1234"))), 0xcbf43926, "continued over two parts");
});

void t.test("append and read - records come back in order, across appends, reopens and small reads", async (t) => {
  const path = join(dir, "order.spool");
  const spool = await openSpool(path);
  const all = Array.from({ length: 2500 }, (_, i) => payload(i));
  await spool.append(all.slice(0, 1));
  await spool.append(all.slice(1, 1000));
  await spool.close();
  const again = await openSpool(path);
  t.equal(again.records, 1000, "a reopened spool counts its records");
  await again.append(all.slice(1000));
  t.equal(again.records, 2500);
  t.equal(again.bytes, (await stat(path)).size);
  const read: Uint8Array[] = [];
  let offset = 0;
  for (;;) {
    const chunk = await again.read(offset, 333);
    if (chunk.payloads.length === 0) break;
    t.equal(chunk.ends.length, chunk.payloads.length, "an end offset per record");
    read.push(...chunk.payloads);
    offset = chunk.ends[chunk.ends.length - 1];
  }
  t.same(decoded(read), decoded(all));
  t.equal(offset, again.bytes);
  await again.close();
});

void t.test("a record larger than one read block comes back whole", async (t) => {
  const spool = await openSpool(join(dir, "large.spool"));
  const large = new Uint8Array(1024 * 1024 + 17).map((_, i) => i % 251);
  await spool.append([payload(1), large, payload(2)]);
  const { payloads } = await spool.read(0, 10);
  t.equal(payloads.length, 3);
  t.same(payloads[1], large);
  t.same(decoded([payloads[2]]), decoded([payload(2)]));
  await spool.close();
});

void t.test("crash mid-append - the torn last record is dropped and the next append is readable", async (t) => {
  for (const tear of ["header", "payload", "zeros"] as const) {
    const path = join(dir, `torn-${tear}.spool`);
    const spool = await openSpool(path);
    await spool.append([payload(1), payload(2), payload(3)]);
    await spool.close();
    const whole = (await stat(path)).size;
    if (tear === "header") await appendFile(path, new Uint8Array([0, 0, 0]));
    if (tear === "payload") {
      // A whole record, then cut inside its payload.
      const extra = await openSpool(path);
      await extra.append([payload(4)]);
      await extra.close();
      await truncate(path, whole + 12);
    }
    // A file system that grew the file but never wrote the data: zeros read as a zero length with
    // a zero CRC, which the CRC over the length refuses (the CRC of no bytes alone is 0).
    if (tear === "zeros") await appendFile(path, new Uint8Array(4096));
    const reopened = await openSpool(path);
    t.equal(reopened.records, 3, `${tear}: the whole records stay`);
    t.equal((await stat(path)).size, whole, `${tear}: the file is cut back to them`);
    t.ok(reopened.tornBytes > 0, `${tear}: the torn bytes are reported`);
    await reopened.append([payload(5)]);
    const { payloads } = await reopened.read(0, 100);
    t.same(decoded(payloads).at(-1), decoded([payload(5)])[0], `${tear}: the append after the tear reads back`);
    t.same(decoded(payloads).slice(0, 3), decoded([payload(1), payload(2), payload(3)]), `${tear}: the old records read back`);
    await reopened.close();
  }
});

void t.test("a corrupted record stops the read there: nothing after it is taken for an event", async (t) => {
  const path = join(dir, "corrupt.spool");
  const spool = await openSpool(path);
  await spool.append([payload(1), payload(2), payload(3)]);
  await spool.close();
  const bytes = await readFile(path);
  bytes[8 + payload(1).length + 8 + 2] ^= 0xff; // a byte of the second payload
  await writeFile(path, bytes);
  const reopened = await openSpool(path);
  t.equal(reopened.records, 1);
  t.same(decoded((await reopened.read(0, 10)).payloads), decoded([payload(1)]));
  await reopened.close();
});

void t.test("a record larger than maxSpoolRecordBytes is refused at write time; the file and the records before it stay whole", async (t) => {
  const path = join(dir, "too-large.spool");
  const spool = await openSpool(path);
  await spool.append([payload(1)]);
  const size = (await stat(path)).size;
  const huge = new Uint8Array(maxSpoolRecordBytes + 1);
  await t.rejects(spool.append([payload(2), huge, payload(3)]), SpoolRecordTooLargeError, "refused");
  t.equal((await stat(path)).size, size, "nothing of the refused batch was written");
  t.equal(spool.records, 1);
  await spool.append([payload(4), new Uint8Array(maxSpoolRecordBytes).fill(7)]);
  await spool.close();
  const reopened = await openSpool(path);
  t.equal(reopened.records, 3, "reopened: every record written is there, none taken for garbage");
  t.equal(reopened.tornBytes, 0);
  const { payloads } = await reopened.read(0, 10);
  t.same(decoded(payloads.slice(0, 2)), decoded([payload(1), payload(4)]));
  t.equal(payloads[2].length, maxSpoolRecordBytes, "a record of exactly the limit is kept");
  await reopened.close();
});

void t.test("read - maxBytes bounds what one read holds in memory; a record larger than it comes alone", async (t) => {
  const spool = await openSpool(join(dir, "max-bytes.spool"));
  const big = new Uint8Array(1000).fill(1);
  await spool.append([big, big, big, new Uint8Array(5000).fill(2), big]);
  const first = await spool.read(0, 100, 2500);
  t.equal(first.payloads.length, 3, "stops once 2500 bytes are read");
  const second = await spool.read(first.ends[2], 100, 2500);
  t.same(second.payloads.map((p) => p.length), [5000], "a record larger than maxBytes comes alone");
  t.equal((await spool.read(second.ends[0], 100, 2500)).payloads.length, 1);
  t.equal((await spool.read(0, 100)).payloads.length, 5, "no bound without maxBytes");
  await spool.close();
});

void t.test("truncate - the spool is empty and appends start again from the beginning", async (t) => {
  const path = join(dir, "truncate.spool");
  const spool = await openSpool(path);
  await spool.append([payload(1), payload(2)]);
  await spool.truncate();
  t.equal(spool.records, 0);
  t.equal((await stat(path)).size, 0);
  await spool.append([payload(3)]);
  t.same(decoded((await spool.read(0, 10)).payloads), decoded([payload(3)]));
  await spool.close();
});

void t.test("lock - a live holder sends a second claimer to <file>.<pid>; a dead holder's file is taken over", async (t) => {
  const file = join(dir, "locked.spool");
  const first = await claimSpoolFile(file);
  t.equal(first.file, file);
  t.equal(await readFile(`${file}.lock`, "utf8"), `${process.pid}\n`);
  const second = await claimSpoolFile(file);
  t.equal(second.file, `${file}.${process.pid}`, "held in this process: the pid's own file");
  await t.rejects(claimSpoolFile(file), "both names held");
  await second.release({ removeFile: true });
  await first.release({ removeFile: false });

  await writeFile(`${file}.lock`, `${process.ppid}\n`); // a live process (our parent) holds it
  t.equal((await claimSpoolFile(file)).file, `${file}.${process.pid}`);
  await rm(`${file}.${process.pid}.lock`);

  await writeFile(`${file}.lock`, `${await deadPid()}\n`);
  const adopted = await claimSpoolFile(file);
  t.equal(adopted.file, file, "a dead holder's lock is taken over");
  await adopted.release({ removeFile: true });
  await t.rejects(stat(`${file}.lock`), "released: no lock left");
});

void t.test("lock - where the holder cannot be asked, the heartbeat decides: a fresh lock is held, one untouched for long is stale", async (t) => {
  const file = join(dir, "heartbeat.spool");
  // No pid: what a claimer leaves between creating the lock and writing it, or a runtime that
  // cannot signal (Deno without --allow-run) sees for every holder.
  await writeFile(`${file}.lock`, "");
  t.equal((await claimSpoolFile(file)).file, `${file}.${process.pid}`, "a lock touched just now is held");
  await rm(`${file}.${process.pid}.lock`);
  const longAgo = new Date(Date.now() - 60_000);
  await utimes(`${file}.lock`, longAgo, longAgo);
  const claim = await claimSpoolFile(file);
  t.equal(claim.file, file, "a lock untouched for a minute is taken over");
  await claim.release({ removeFile: true });
});

void t.test("orphans - <file>.<pid> spools no live process holds are claimed; live ones are not, empty ones are removed", async (t) => {
  const file = join(dir, "orphans.spool");
  const dead = await deadPid();
  const holding = await openSpool(`${file}.${dead}`);
  await holding.append([payload(1)]);
  await holding.close();
  await writeFile(`${file}.${dead}.lock`, `${dead}\n`);
  const deadEmpty = await deadPid();
  await writeFile(`${file}.${deadEmpty}`, "");
  const live = await openSpool(`${file}.${process.ppid}`);
  await live.append([payload(2)]);
  await live.close();
  await writeFile(`${file}.${process.ppid}.lock`, `${process.ppid}\n`);

  const closed = await deadPid(); // closed with events left: its file stays, its lock is gone
  const left = await openSpool(`${file}.${closed}`);
  await left.append([payload(3)]);
  await left.close();

  const claims = await claimOrphanSpools(file);
  t.same(claims.map((c) => c.file).sort(), [`${file}.${dead}`, `${file}.${closed}`].sort());
  await t.rejects(stat(`${file}.${deadEmpty}`), "an empty orphan is removed");
  t.equal(await readFile(`${file}.${dead}.lock`, "utf8"), `${process.pid}\n`, "the orphan's lock is ours now");
  t.same(await claimOrphanSpools(file), [], "claimed once");
  for (const c of claims) await c.release({ removeFile: true });
});

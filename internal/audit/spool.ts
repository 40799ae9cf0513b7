/**
 * The audit spool: where a process keeps the audit events it could not hand to JetStream, on
 * local disk, until NATS answers again. One append-only file of records, each
 * `u32 length | u32 CRC-32 of length and payload | payload` (big-endian; the payload is an
 * AuditEvent in protobuf binary). A process that dies while appending leaves at most one torn record at the
 * end: opening the file drops it (the CRC also catches a tail the file system extended but never
 * filled), so appends go on after the last whole record.
 *
 * One live process per file: `<file>.lock` holds the owner's pid. A second live process on the
 * same path spools to `<file>.<pid>` instead; a file whose owner is dead is adopted (replayed
 * by whoever claims it next). Runtime-neutral: only node:fs, node:path and node:process, so the
 * Deno gateway uses it as is (with --allow-read and --allow-write on the spool directory).
 */
import { mkdir, open, readdir, readFile, stat, unlink, utimes, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import process from "node:process";

/**
 * The largest record: larger than any event NATS takes (its max_payload is 1 MiB by default, at
 * most 64 MiB), so a larger length read back is garbage, and append() refuses to write one.
 */
export const maxSpoolRecordBytes = 4 * 1024 * 1024;
const headerBytes = 8;
const readBlockBytes = 1024 * 1024;

/** append() was given a record larger than maxSpoolRecordBytes: nothing was written. */
export class SpoolRecordTooLargeError extends Error {
  override name = "SpoolRecordTooLargeError";
  readonly bytes: number;
  constructor(index: number, bytes: number) {
    super(`audit spool: record ${index} is ${bytes} bytes, more than the ${maxSpoolRecordBytes} a spool record can hold`);
    this.bytes = bytes;
  }
}

/** An open spool file. Not safe for concurrent calls: the sink serialises them. */
export interface Spool {
  readonly path: string;
  /** Whole records in the file. */
  readonly records: number;
  /** The file's length up to the end of its last whole record. */
  readonly bytes: number;
  /** Bytes of a torn last record dropped when the file was opened (0 normally). */
  readonly tornBytes: number;
  /**
   * Appends the records in order and fsyncs: once it resolves they survive a crash. A record
   * larger than maxSpoolRecordBytes is refused (SpoolRecordTooLargeError) before anything is
   * written: read back, its length would be taken for garbage and the file cut there.
   */
  append(payloads: readonly Uint8Array[]): Promise<void>;
  /** Up to `maxRecords` records from `offset` (a record boundary), with the offset after each; up to `maxBytes` of payload (but one record at least). */
  read(offset: number, maxRecords: number, maxBytes?: number): Promise<{ payloads: Uint8Array[]; ends: number[] }>;
  /** Empties the file (every record was replayed). */
  truncate(): Promise<void>;
  close(): Promise<void>;
}

/** Opens (creating) a spool file, dropping a torn last record. */
export async function openSpool(path: string): Promise<Spool> {
  await mkdir(dirname(path), { recursive: true });
  const fh = await open(path, "a+");
  let records = 0;
  let bytes = 0;
  let tornBytes = 0;
  try {
    const size = (await fh.stat()).size;
    for (;;) {
      const chunk = await readRecords(fh, bytes, size, 10_000);
      if (chunk.payloads.length === 0) break;
      records += chunk.payloads.length;
      bytes = chunk.ends[chunk.ends.length - 1];
    }
    if (bytes < size) {
      tornBytes = size - bytes;
      await fh.truncate(bytes);
      await fh.datasync();
    }
  } catch (error) {
    await fh.close();
    throw error;
  }
  return {
    path,
    get records() { return records; },
    get bytes() { return bytes; },
    tornBytes,
    async append(payloads) {
      if (payloads.length === 0) return;
      const tooLarge = payloads.findIndex((p) => p.length > maxSpoolRecordBytes);
      if (tooLarge >= 0) throw new SpoolRecordTooLargeError(tooLarge, payloads[tooLarge].length);
      let length = 0;
      for (const p of payloads) length += headerBytes + p.length;
      const buffer = new Uint8Array(length);
      const view = new DataView(buffer.buffer);
      let at = 0;
      for (const p of payloads) {
        view.setUint32(at, p.length);
        view.setUint32(at + 4, crc32(p, crc32(buffer.subarray(at, at + 4))));
        buffer.set(p, at + headerBytes);
        at += headerBytes + p.length;
      }
      try {
        // The file is opened for appending: every write goes to its end whatever the position.
        for (let written = 0; written < length;) written += (await fh.write(buffer, written, length - written)).bytesWritten;
        await fh.datasync();
      } catch (error) {
        // A half-written batch would hide every later record behind a bad one: cut it off.
        await fh.truncate(bytes).catch(() => {});
        throw error;
      }
      records += payloads.length;
      bytes += length;
    },
    read: (offset, maxRecords, maxBytes = Infinity) => readRecords(fh, offset, bytes, maxRecords, maxBytes),
    async truncate() {
      await fh.truncate(0);
      await fh.datasync();
      records = 0;
      bytes = 0;
    },
    close: () => fh.close(),
  };
}

/** Whole, intact records in [offset, end); stops at the first short or corrupt one. */
async function readRecords(fh: FileHandle, offset: number, end: number, maxRecords: number, maxBytes = Infinity) {
  const payloads: Uint8Array[] = [];
  const ends: number[] = [];
  let at = offset;
  let total = 0;
  const more = () => payloads.length < maxRecords && total < maxBytes;
  while (more() && at + headerBytes <= end) {
    const block = new Uint8Array(Math.min(readBlockBytes, end - at));
    const { bytesRead } = await fh.read(block, 0, block.length, at);
    const view = new DataView(block.buffer, 0, bytesRead);
    let i = 0;
    while (more() && i + headerBytes <= bytesRead) {
      const length = view.getUint32(i);
      if (length > maxSpoolRecordBytes) return { payloads, ends };
      if (i + headerBytes + length > bytesRead) break;
      const payload = block.slice(i + headerBytes, i + headerBytes + length);
      if (crc32(payload, crc32(block.subarray(i, i + 4))) !== view.getUint32(i + 4)) return { payloads, ends };
      payloads.push(payload);
      total += length;
      i += headerBytes + length;
      ends.push(at + i);
    }
    if (i === 0) {
      // One record larger than what was read: read exactly it (or the file ends inside it).
      const header = new DataView(block.buffer, 0, bytesRead);
      if (bytesRead < headerBytes) break;
      const length = header.getUint32(0);
      if (length > maxSpoolRecordBytes || at + headerBytes + length > end) break;
      const payload = new Uint8Array(length);
      const got = (await fh.read(payload, 0, length, at + headerBytes)).bytesRead;
      if (got < length || crc32(payload, crc32(block.subarray(0, 4))) !== header.getUint32(4)) break;
      payloads.push(payload);
      total += length;
      i = headerBytes + length;
      ends.push(at + i);
    }
    at += i;
  }
  return { payloads, ends };
}

const crcTable = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/**
 * CRC-32 (IEEE), as zlib's crc32(bytes, previous); written out because node:zlib is not
 * runtime-neutral. A record's covers its length too: a run of zeros (a tail the file system
 * grew but never wrote) is then no valid empty record.
 */
export function crc32(bytes: Uint8Array, previous = 0): number {
  let c = (previous ^ 0xffffffff) >>> 0;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A spool file this process holds the lock of. */
export interface SpoolClaim {
  file: string;
  /** Removes the lock; removes the file too when `removeFile` (it holds nothing). */
  release(options: { removeFile: boolean }): Promise<void>;
}

// Locks this process holds. A pid in a lock file tells processes apart, not two sinks of one
// process on one path: this set does (it is the process's, as the pid is).
const heldHere = new Set<string>();

/** How often an owner touches its lock, and how old an untouched one must be to count as stale. */
const heartbeatMs = 5_000;
const staleAfterMs = 30_000;

/**
 * Claims `file`, or `<file>.<pid>` when a live process holds `file`. A lock left by a dead
 * process is taken over: its spool is replayed by the new owner. The holder is dead when
 * signal 0 says so; where that cannot be asked (Deno without --allow-run), when its lock has
 * not been touched for 30 s (an owner touches it every 5 s).
 */
export async function claimSpoolFile(file: string): Promise<SpoolClaim> {
  await mkdir(dirname(file), { recursive: true });
  for (const candidate of [file, `${file}.${process.pid}`]) {
    const claim = await tryClaim(candidate);
    if (claim) return claim;
  }
  throw new Error(`audit spool: ${file} and ${file}.${process.pid} are both held by live processes`);
}

/**
 * Claims every other process's `<file>.<pid>` spool that no live process holds and that holds
 * records, so that its events are replayed by this process; empty ones are removed. A live
 * owner always holds the lock (it takes it before it creates the file), so the lock decides.
 */
export async function claimOrphanSpools(file: string): Promise<SpoolClaim[]> {
  const base = basename(file);
  const claims: SpoolClaim[] = [];
  for (const name of await readdir(dirname(file)).catch(() => [] as string[])) {
    const pid = /^\.(\d+)$/.exec(name.startsWith(base) ? name.slice(base.length) : "")?.[1];
    if (pid === undefined || Number(pid) === process.pid) continue;
    const claim = await tryClaim(join(dirname(file), name));
    if (!claim) continue;
    if ((await stat(claim.file).catch(() => undefined))?.size) claims.push(claim);
    else await claim.release({ removeFile: true });
  }
  return claims;
}

async function tryClaim(file: string): Promise<SpoolClaim | undefined> {
  const lock = `${file}.lock`;
  if (heldHere.has(lock)) return undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(lock, "wx");
      try {
        await fh.writeFile(`${process.pid}\n`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      return held(file, lock);
    } catch (error) {
      if ((error as { code?: string }).code !== "EEXIST") throw error;
    }
    const content = await readFile(lock, "utf8").catch(() => undefined);
    if (content === undefined) continue; // removed meanwhile: try again
    const holder = Number.parseInt(content, 10);
    // Our own pid in a lock this process does not hold: a dead process that had the pid before us.
    const alive = holder === process.pid ? false : isAlive(holder);
    if (alive) return undefined;
    if (alive === undefined) {
      // Cannot ask (or no pid yet: a claimer between creating the lock and writing it): the heartbeat decides.
      const age = Date.now() - ((await stat(lock).catch(() => undefined))?.mtimeMs ?? 0);
      if (age < staleAfterMs) return undefined;
    }
    // Remove the stale lock only if it still names that holder: another process may have taken it over meanwhile.
    if ((await readFile(lock, "utf8").catch(() => undefined)) === content) await unlink(lock).catch(() => {});
  }
  return undefined;
}

function held(file: string, lock: string): SpoolClaim {
  heldHere.add(lock);
  const heartbeat = setInterval(() => {
    const now = new Date();
    utimes(lock, now, now).catch(() => {});
  }, heartbeatMs);
  (heartbeat as { unref?: () => void }).unref?.();
  return {
    file,
    async release({ removeFile }) {
      clearInterval(heartbeat);
      if (removeFile) await unlink(file).catch(() => {});
      await unlink(lock).catch(() => {});
      heldHere.delete(lock);
    },
  };
}

/** Whether a process with this pid exists (EPERM: it does, under another user); undefined when the runtime cannot tell. */
function isAlive(pid: number): boolean | undefined {
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    const code = (error as { code?: string }).code;
    return code === "ESRCH" ? false : code === "EPERM" ? true : undefined;
  }
}

/**
 * The audit sink's spools: this process's own (what NATS did not take, appended in the order
 * recorded) and the ones adopted from dead processes on the same path (`<path>.<pid>`, or the
 * path itself when its holder died). The replay publishes them oldest first, a chunk at a time,
 * with the same Nats-Msg-Id (JetStream drops the copy of an event whose first acknowledgement
 * was lost); it moves past what is acknowledged and past poison (dead-lettered), and stops at
 * the first event NATS did not take, to try again later: events reach the stream in order.
 */
import { fromBinary, toBinary } from "@bufbuild/protobuf";
// @deno-types="../../gen/jobmesh/v1/audit_pb.d.ts"
import { AuditEventSchema } from "../../gen/jobmesh/v1/audit_pb.js";
import type { DeadLetter, DeadLetters } from "./sink-dead-letter.ts";
import type { Entry } from "./sink-publish.ts";
import { claimOrphanSpools, claimSpoolFile, maxSpoolRecordBytes, openSpool, type Spool, type SpoolClaim } from "./spool.ts";

/** Payload bytes a replay chunk holds in memory, at most (one record larger than it goes alone). */
const replayChunkBytes = 16 * 1024 * 1024;

interface Source { claim: SpoolClaim; spool: Spool; offset: number; replayed: number }

export interface SpoolSources {
  /** Whether this process's own spool holds events (newer events then go behind them). */
  readonly ownHolds: boolean;
  /** Whether a dead process's spool still waits to be replayed (before this process's own). */
  readonly adopting: boolean;
  /** Events in spool files, not yet replayed. */
  readonly spooled: number;
  /**
   * Appends the entries to this process's spool, fsynced; an entry that cannot be a spool record
   * (not writable by the codec, larger than maxSpoolRecordBytes) is dead-lettered instead.
   * Throws when the spool cannot be written (nothing of the entries is then taken).
   */
  append(entries: readonly Entry[]): Promise<void>;
  /**
   * Replays the next chunk of the oldest spool through `publish` (which resolves once every
   * entry it was given is settled): "next" when the chunk went through whole (or an adopted
   * spool was finished), "wait" when an event was not taken and the replay must wait,
   * "caught-up" when every spool is replayed (this process's own is emptied).
   */
  replayChunk(publish: (entries: Entry[]) => Promise<void>): Promise<"next" | "wait" | "caught-up">;
  /** Closes the files; an empty own spool is removed, one holding events stays for the next process. */
  close(): Promise<void>;
}

/** Claims `spoolFile` (or `<spoolFile>.<pid>`) and every dead process's spool beside it. */
export async function openSpoolSources(deps: {
  spoolFile: string;
  deadLetters: DeadLetters;
  replayBatch: number;
  log: { warn(fields: Record<string, unknown>, message: string): void; error(fields: Record<string, unknown>, message: string): void };
}): Promise<SpoolSources> {
  const { log, deadLetters } = deps;
  const claim = await claimSpoolFile(deps.spoolFile);
  const own: Source = { claim, spool: await openSpool(claim.file).catch(async (error) => { await claim.release({ removeFile: false }); throw error; }), offset: 0, replayed: 0 };
  const adopted: Source[] = [];
  for (const orphan of await claimOrphanSpools(deps.spoolFile)) {
    const spool = await openSpool(orphan.file).catch((error: unknown) => log.error({ err: error, file: orphan.file }, "audit sink: cannot open a dead process's spool"));
    if (spool) adopted.push({ claim: orphan, spool, offset: 0, replayed: 0 });
    else await orphan.release({ removeFile: false });
  }
  for (const { spool } of [own, ...adopted]) {
    if (spool.tornBytes > 0) log.warn({ file: spool.path, bytes: spool.tornBytes }, "audit sink: dropped a torn last record of the spool");
  }

  return {
    get ownHolds() { return own.spool.bytes > own.offset; },
    get adopting() { return adopted.length > 0; },
    get spooled() { return [own, ...adopted].reduce((n, s) => n + s.spool.records - s.replayed, 0); },

    async append(entries) {
      const payloads: Uint8Array[] = [];
      const poison: DeadLetter[] = [];
      for (const entry of entries) {
        try {
          entry.bytes ??= toBinary(AuditEventSchema, entry.event);
        } catch (error) {
          // Not an AuditEvent the codec can write: it must not hold back every event behind it.
          poison.push({ event: entry.event, reason: `cannot be serialised: ${String(error)}` });
          continue;
        }
        // Read back, a longer record would be taken for garbage: the spool refuses it.
        if (entry.bytes.length > maxSpoolRecordBytes) poison.push({ event: entry.event, bytes: entry.bytes, reason: `${entry.bytes.length} bytes: larger than a spool record` });
        else payloads.push(entry.bytes);
      }
      await own.spool.append(payloads);
      await deadLetters.write(poison);
    },

    async replayChunk(publish) {
      const source = adopted[0] ?? own;
      if (source.offset >= source.spool.bytes) {
        if (source === own) {
          await own.spool.truncate();
          own.offset = own.replayed = 0;
          return "caught-up";
        }
        adopted.shift();
        await source.spool.close();
        await source.claim.release({ removeFile: true });
        return "next";
      }
      const { payloads, ends } = await source.spool.read(source.offset, deps.replayBatch, replayChunkBytes);
      if (payloads.length === 0) {
        log.error({ file: source.spool.path, offset: source.offset }, "audit sink: unreadable spool record; the rest of the spool is skipped");
        source.offset = source.spool.bytes;
        return "next";
      }
      const entries: Entry[] = [];
      for (const bytes of payloads) {
        try {
          entries.push({ seq: -1, event: fromBinary(AuditEventSchema, bytes), bytes, acked: false });
        } catch (error) {
          entries.push({ seq: -1, event: undefined as never, bytes, acked: false, poison: `a spooled record that is not an AuditEvent: ${String(error)}` });
        }
      }
      await publish(entries.filter((e) => !e.poison));
      // The spool moves on past what is acknowledged and past poison (kept in the dead letters).
      let done = 0;
      while (done < entries.length && (entries[done].acked || entries[done].poison)) done++;
      await deadLetters.write(entries.slice(0, done).filter((e) => e.poison).map((e) => ({ event: e.event, bytes: e.bytes, reason: e.poison! })));
      if (done > 0) {
        source.offset = ends[done - 1];
        source.replayed += done;
      }
      return done === entries.length ? "next" : "wait";
    },

    async close() {
      for (const source of [own, ...adopted]) {
        await source.spool.close();
        // An empty spool is removed; one holding events stays for the next process on this path.
        await source.claim.release({ removeFile: source.spool.bytes === source.offset && source === own });
      }
    },
  };
}

/**
 * The audit sink's dead letters: events that can never be published, so that neither the live
 * path nor the spool waits behind them. An event is poison when publishing it fails for a reason
 * of its own, not of NATS's state: larger than the server's max_payload, a subject NATS refuses,
 * a size the stream refuses, larger than a spool record (maxSpoolRecordBytes), not writable by the
 * codec, or a spooled record that is not an AuditEvent. Retrying it would only hold back every
 * event behind it (and, past the stream's duplicate window, store the ones before it twice).
 *
 * The file keeps what was lost where an operator can see it, and (the event being whole) publish
 * it again once the cause is fixed: one JSON object a line, appended and fsynced,
 * `{ time, reason, id, tenant, action, bytes, event? }` where `event` is the AuditEvent in
 * protobuf binary, base64 (left out when larger than maxSpoolRecordBytes, or not writable). The
 * file is bounded: past `maxBytes` lines are no longer written, the events only counted and logged.
 *
 * Runtime-neutral (node:fs, node:buffer): the Deno gateway uses it as is.
 */
import { toBinary } from "@bufbuild/protobuf";
import { Buffer } from "node:buffer";
import { open, stat, type FileHandle } from "node:fs/promises";
// @deno-types="../../gen/jobmesh/v1/audit_pb.d.ts"
import { AuditEventSchema, type AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import { maxSpoolRecordBytes } from "./spool.ts";

/** An event given up on, and why. `bytes` is its encoding when known (a spooled record, or already encoded). */
export interface DeadLetter {
  event?: AuditEvent;
  bytes?: Uint8Array;
  reason: string;
}

/** Where the sink puts its poison events. Not safe for concurrent calls: the sink serialises them. */
export interface DeadLetters {
  readonly path: string;
  /** Events dead-lettered by this process (written to the file or, past its bound, only counted). */
  readonly count: number;
  /** Appends the letters and fsyncs; never throws (a failure is logged: these events are lost). */
  write(letters: readonly DeadLetter[]): Promise<void>;
  close(): Promise<void>;
}

/** Opens the dead-letter file lazily: a process with no poison event leaves no file. */
export function openDeadLetters(path: string, log: { error(fields: Record<string, unknown>, message: string): void }, maxBytes: number): DeadLetters {
  let fh: FileHandle | undefined;
  let size = 0;
  let count = 0;
  return {
    path,
    get count() { return count; },
    async write(letters) {
      if (letters.length === 0) return;
      const lines = letters.map(lineOf);
      for (const line of lines) {
        if (count++ % 1000 === 0) log.error({ ...line.fields, file: path, deadLettered: count }, "audit sink: an event that can never be published was dead-lettered");
      }
      try {
        if (!fh) {
          fh = await open(path, "a");
          size = (await stat(path)).size;
        }
        const fits: string[] = [];
        for (const { text } of lines) {
          const length = Buffer.byteLength(text);
          if (size + length > maxBytes) break;
          fits.push(text);
          size += length;
        }
        if (fits.length < lines.length) log.error({ file: path, maxBytes, lost: lines.length - fits.length }, "audit sink: the dead-letter file is full; dead letters lost");
        if (fits.length === 0) return;
        await fh.write(fits.join(""));
        await fh.datasync();
      } catch (error) {
        log.error({ err: error, file: path, lost: lines.length }, "audit sink: cannot write the dead-letter file; dead letters lost");
      }
    },
    async close() {
      await fh?.close();
      fh = undefined;
    },
  };
}

function lineOf(letter: DeadLetter): { text: string; fields: Record<string, unknown> } {
  const { event, reason } = letter;
  let bytes = letter.bytes;
  if (!bytes && event) {
    try {
      bytes = toBinary(AuditEventSchema, event);
    } catch {
      // Not writable by the codec: its identity is all that can be kept.
    }
  }
  const fields = {
    reason,
    // Cut: these are what made some events poison in the first place.
    id: cut(event?.name.slice(event.name.lastIndexOf("/") + 1)),
    tenant: cut(event?.tenant),
    action: cut(event?.action),
    bytes: bytes?.length,
  };
  const kept = bytes && bytes.length <= maxSpoolRecordBytes ? Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("base64") : undefined;
  return { text: JSON.stringify({ time: new Date().toISOString(), ...fields, event: kept }) + "\n", fields };
}

const cut = (text: string | undefined) => (text === undefined || text.length <= 256 ? text : `${text.slice(0, 256)}…`);

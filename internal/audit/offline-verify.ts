/**
 * `jobmesh audit verify <export> [--key <key_id>]`: checks an export of ExportAuditEvents with
 * nothing but the file. The export holds the signing keys, then the events in sequence order,
 * each checkpoint after the event at its sequence; the chain and every checkpoint's signature
 * are checked as VerifyAuditChain checks them (chain.ts), stopping at the first break.
 *
 * Accepted shapes, one JSON object after another (proto3 JSON, ExportAuditEventsResponse): the
 * gateway's NDJSON (`{"result": {...}}` per line), bare messages one per line, and grpcurl's
 * output (pretty-printed objects one after another).
 *
 * Without --key, the keys in the file are trusted: that proves the export is what its signer
 * signed, not who the signer is. Pinning the key id obtained from the deployment (an admin's
 * ListAuditCheckpoints, a past export) proves both.
 */
import { fromJson, type JsonValue } from "@bufbuild/protobuf";
import { createReadStream } from "node:fs";
import { ExportAuditEventsResponseSchema, type ExportAuditEventsResponse } from "../../gen/jobmesh/v1/audit_pb.js";
import { auditKeyIdOf, createChainVerifier, genesisHash, type ChainVerdict, type ChainVerifier } from "./chain.ts";

/** The largest single JSON object read (an event is at most ~10 KiB; a checkpoint ~32 KiB). */
const maxObjectChars = 4 * 1024 * 1024;

/** A file that is not an export: unreadable, not JSON, or a stream that ended in an error. */
export class ExportFormatError extends Error {
  override name = "ExportFormatError";
}

/**
 * The top-level JSON objects of a text, however they are separated (newlines, nothing, or
 * pretty-printed across lines). Linear: each character is looked at once.
 */
export async function* jsonObjects(chunks: AsyncIterable<string>): AsyncGenerator<JsonValue> {
  let current = "";
  let depth = 0;
  let inString = false;
  let escaped = false;
  let line = 1;
  for await (const chunk of chunks) {
    let from = 0;
    for (let i = 0; i < chunk.length; i++) {
      const c = chunk[i];
      if (c === "\n") line++;
      if (depth === 0) {
        if (c === "{") {
          depth = 1;
          from = i;
        } else if (c !== " " && c !== "\n" && c !== "\r" && c !== "\t") {
          throw new ExportFormatError(`line ${line}: expected a JSON object, found ${JSON.stringify(c)}`);
        }
        continue;
      }
      if (inString) {
        if (escaped) escaped = false;
        else if (c === "\\") escaped = true;
        else if (c === '"') inString = false;
      } else if (c === '"') inString = true;
      else if (c === "{" || c === "[") depth++;
      else if (c === "}" || c === "]") {
        depth--;
        if (depth === 0) {
          const text = current + chunk.slice(from, i + 1);
          current = "";
          try {
            yield JSON.parse(text) as JsonValue;
          } catch (error) {
            throw new ExportFormatError(`line ${line}: not JSON (${(error as Error).message})`);
          }
        }
      }
    }
    if (depth > 0) {
      current += chunk.slice(from);
      if (current.length > maxObjectChars) throw new ExportFormatError(`line ${line}: an object longer than ${maxObjectChars} characters`);
    }
  }
  if (depth > 0) throw new ExportFormatError("the file ends inside a JSON object (a truncated export)");
}

/** One item of the export, out of the gateway's `{"result": ...}` wrapper when it has one. */
function itemOf(value: JsonValue, index: number): ExportAuditEventsResponse {
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new ExportFormatError(`item ${index + 1}: not an object`);
  if ("error" in value) throw new ExportFormatError(`item ${index + 1}: the export stream ended with an error: ${JSON.stringify(value.error)}`);
  const message = "result" in value ? value.result : value;
  try {
    return fromJson(ExportAuditEventsResponseSchema, message, { ignoreUnknownFields: true });
  } catch (error) {
    throw new ExportFormatError(`item ${index + 1}: not an ExportAuditEventsResponse (${(error as Error).message})`);
  }
}

export interface ExportVerdict {
  verdict: ChainVerdict;
  /** The key ids trusted: the pinned one, or those the file holds. */
  trustedKeys: string[];
}

/** Verifies the items of an export; throws ExportFormatError when it is not one. */
export async function verifyExport(values: AsyncIterable<JsonValue>, options: { pinnedKeyId?: string } = {}): Promise<ExportVerdict> {
  const keys = new Map<string, Uint8Array>();
  let verifier: ChainVerifier | undefined;
  let index = 0;
  for await (const value of values) {
    const item = itemOf(value, index++);
    switch (item.item.case) {
      case "signingKey": {
        const { keyId, publicKey } = item.item.value;
        // A key listed under another key's id would let a forger borrow a pinned id.
        if (auditKeyIdOf(publicKey) !== keyId) throw new ExportFormatError(`item ${index}: key ${JSON.stringify(keyId)} is not the id of its public key`);
        if (options.pinnedKeyId === undefined || options.pinnedKeyId === keyId) keys.set(keyId, publicKey);
        break;
      }
      case "auditEvent": {
        const event = item.item.value;
        // The first exported event's link to its predecessor is trusted; the checkpoint that
        // covers it signs its hash, which depends on that link.
        verifier ??= createChainVerifier({ keys, startSequence: event.sequence, firstPrevHash: event.sequence <= 1n ? genesisHash : event.prevHash });
        verifier.addEvent(event);
        break;
      }
      case "checkpoint":
        // A checkpoint before any event covers events before the export's range.
        verifier?.addCheckpoint(item.item.value);
        break;
      default:
        throw new ExportFormatError(`item ${index}: empty`);
    }
  }
  verifier ??= createChainVerifier({ keys, startSequence: 1n });
  return { verdict: verifier.finish(), trustedKeys: [...keys.keys()] };
}

/** The one line the command prints for a verdict. */
export function verdictLine(v: ChainVerdict): string {
  if (v.intact) return `intact: ${v.verifiedCount} events, ${v.checkpointsVerified} checkpoints, ${v.unsignedCount} unsigned`;
  const prefix = `sequence ${v.firstBrokenSequence}: `;
  return `broken at sequence ${v.firstBrokenSequence}: ${v.reason.startsWith(prefix) ? v.reason.slice(prefix.length) : v.reason}`;
}

const usage = "usage: jobmesh audit verify <export.ndjson> [--key <key_id>]";

/**
 * The `jobmesh audit ...` command: returns the exit code (0 intact, 1 broken, 2 not an export
 * or bad usage) after writing its verdict to `out`.
 */
export async function auditCommand(args: string[], out: { stdout(line: string): void; stderr(line: string): void }): Promise<number> {
  const [sub, ...rest] = args;
  let file: string | undefined;
  let pinnedKeyId: string | undefined;
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === "--key" && i + 1 < rest.length) pinnedKeyId = rest[++i];
    else if (rest[i].startsWith("--key=")) pinnedKeyId = rest[i].slice("--key=".length);
    else if (file === undefined && !rest[i].startsWith("--")) file = rest[i];
    else file = undefined;
  }
  if (sub !== "verify" || file === undefined || rest.length > 3) {
    out.stderr(usage);
    return 2;
  }
  try {
    const { verdict, trustedKeys } = await verifyExport(jsonObjects(createReadStream(file, { encoding: "utf8" })), { pinnedKeyId });
    if (pinnedKeyId === undefined && verdict.checkpointsVerified > 0n) {
      out.stderr(`note: trusted the key(s) in the file: ${trustedKeys.join(", ")}; pin the deployment's with --key <key_id>`);
    }
    out.stdout(verdictLine(verdict));
    return verdict.intact ? 0 : 1;
  } catch (error) {
    const reason = error instanceof ExportFormatError ? error.message : (error as NodeJS.ErrnoException).code === "ENOENT" ? `${file}: no such file` : String(error);
    out.stderr(`not an audit export: ${reason}`);
    return 2;
  }
}

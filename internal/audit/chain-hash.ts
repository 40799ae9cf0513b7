/**
 * The audit log's hashing and signing: pure (no I/O), used by the store when it appends and
 * signs, by the verifier (chain.ts), and offline by `jobmesh audit verify`.
 *
 * Per tenant, event n has sequence n (from 1), prev_hash = hash of event n-1 (64 zeros for the
 * first) and hash = SHA-256(32 bytes of prev_hash || canonical event). A signed checkpoint lists
 * the hash of every event since the previous checkpoint.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createHash, createPublicKey, sign, verify, type KeyObject } from "node:crypto";
import { AuditCheckpointSchema, AuditEventSchema, type AuditCheckpoint, type AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";

/** prev_hash of the first event of a chain. */
export const genesisHash = "0".repeat(64);

/** A chain hash as stored and signed: 64 lower-case hex digits (the one pattern of the audit log). */
export const hexHash = /^[0-9a-f]{64}$/;
// Unknown fields are left out: what the chain hashes is what the store can give back from a row.
const canonical = { writeUnknownFields: false };

/** The event as hashed: protobuf binary (fields in number order) with prev_hash and hash empty. */
export function canonicalEventBytes(event: AuditEvent): Uint8Array {
  return toBinary(AuditEventSchema, { ...event, prevHash: "", hash: "" }, canonical);
}

/** hex SHA-256(bytes of prevHash || canonicalEventBytes(event)); prevHash must be 64 lower-case hex digits. */
export function chainHashOf(prevHash: string, event: AuditEvent): string {
  if (!hexHash.test(prevHash)) throw new RangeError(`prev_hash must be 64 lower-case hex digits, got ${JSON.stringify(prevHash.slice(0, 80))}`);
  return createHash("sha256").update(Buffer.from(prevHash, "hex")).update(canonicalEventBytes(event)).digest("hex");
}

/** What a checkpoint's Ed25519 signature covers: its protobuf binary with signature empty. */
export function checkpointSignedBytes(cp: AuditCheckpoint): Uint8Array {
  return toBinary(AuditCheckpointSchema, { ...cp, signature: new Uint8Array(0) }, canonical);
}

/** An audit signing key's id: the first 16 hex digits of the SHA-256 of its raw public key. */
export function auditKeyIdOf(rawPublicKey: Uint8Array): string {
  return createHash("sha256").update(rawPublicKey).digest("hex").slice(0, 16);
}

/** A node:crypto key for a raw 32-byte Ed25519 public key; throws when it is not one. */
export function ed25519PublicKeyOf(raw: Uint8Array): KeyObject {
  if (raw.length !== 32) throw new RangeError(`an Ed25519 public key is 32 bytes, got ${raw.length}`);
  return createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: Buffer.from(raw).toString("base64url") }, format: "jwk" });
}

/** True when the checkpoint's signature verifies under the key. */
export function isCheckpointSignedBy(cp: AuditCheckpoint, key: KeyObject): boolean {
  return cp.signature.length === 64 && verify(null, checkpointSignedBytes(cp), key, cp.signature);
}

/** What a checkpoint states: a tenant's event hashes from firstSequence on, in order. */
export interface CheckpointStatement {
  tenant: string;
  firstSequence: bigint;
  /** The hex hashes of the events firstSequence..firstSequence + length - 1; at least one. */
  hashes: string[];
  time: Date;
}

/** Builds the checkpoint of a statement and signs it (Ed25519) with the key. */
export function signCheckpoint(statement: CheckpointStatement, key: { keyId: string; privateKey: KeyObject }): AuditCheckpoint {
  const cp = create(AuditCheckpointSchema, {
    tenant: statement.tenant,
    firstSequence: statement.firstSequence,
    sequence: statement.firstSequence + BigInt(statement.hashes.length) - 1n,
    hash: statement.hashes.at(-1),
    checkpointTime: timestampFromDate(statement.time),
    eventHashes: new Uint8Array(Buffer.from(statement.hashes.join(""), "hex")),
    keyId: key.keyId,
  });
  cp.signature = new Uint8Array(sign(null, checkpointSignedBytes(cp), key.privateKey));
  return cp;
}


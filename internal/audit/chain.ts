/**
 * The audit chain's verifier: pure (no I/O), used by VerifyAuditChain, the export's readers and
 * offline by `jobmesh audit verify`. The hashing and signing it checks are in chain-hash.ts
 * (re-exported here for the callers that knew them from this module).
 *
 * A signed checkpoint lists the hash of every event since the previous checkpoint, so a chain
 * recomputed after an edit is caught at the exact sequence that was edited: its hash there is
 * no longer the signed one.
 */
import type { KeyObject } from "node:crypto";
import { AuditChainBreak, type AuditCheckpoint, type AuditEvent } from "../../gen/jobmesh/v1/audit_pb.js";
import { chainHashOf, ed25519PublicKeyOf, genesisHash, hexHash, isCheckpointSignedBy } from "./chain-hash.ts";

export {
  auditKeyIdOf,
  canonicalEventBytes,
  chainHashOf,
  checkpointSignedBytes,
  ed25519PublicKeyOf,
  genesisHash,
  hexHash,
  isCheckpointSignedBy,
  signCheckpoint,
  type CheckpointStatement,
} from "./chain-hash.ts";

export interface ChainVerdict {
  intact: boolean;
  /** 0 when intact. */
  firstBrokenSequence: bigint;
  breakKind: AuditChainBreak;
  /** For people, naming the sequence: "sequence 42: stored hash does not match its content (edited)". */
  reason: string;
  /** Events that passed every check before the break (all of them when intact). */
  verifiedCount: bigint;
  /** The last event that passed (startSequence - 1 when none did). */
  lastSequence: bigint;
  lastHash: string;
  checkpointsVerified: bigint;
  /** Verified events after the last verified checkpoint: chained but not (yet) signed. */
  unsignedCount: bigint;
}

export interface ChainVerifierOptions {
  /** Trusted raw Ed25519 public keys by key_id; a checkpoint signed by any other key is a break. */
  keys: Map<string, Uint8Array>;
  /** The first sequence to verify; values below 1 mean 1. */
  startSequence: bigint;
  /** The hash of the event before startSequence (trusted); genesisHash from sequence 1. */
  firstPrevHash?: string;
  /** The tenant every checkpoint must name; by default the first checkpoint's. */
  tenant?: string;
}

export interface ChainVerifier {
  /** The next event; events come in sequence order. */
  addEvent(event: AuditEvent): void;
  /**
   * A checkpoint, after the event at its sequence (one that comes earlier waits for it). Feed
   * only checkpoints with sequence >= startSequence and, unless the range runs to the head, <= the
   * last event fed: one beyond the last event says the signed chain is longer (MISSING).
   */
  addCheckpoint(cp: AuditCheckpoint): void;
  finish(): ChainVerdict;
}

interface Break {
  sequence: bigint;
  kind: AuditChainBreak;
  reason: string;
}

/**
 * Checks a chain as it streams by and stops at the FIRST break. Per event: its sequence follows
 * the previous one (else MISSING, or REORDERED when the expected one turns up later), prev_hash
 * is the previous hash (else REORDERED), hash is recomputed (else EDITED). Per checkpoint: a
 * trusted key and a valid signature, continuity with the previous checkpoint, and the hash it
 * signed for every sequence equal to the event's (else CHECKPOINT_MISMATCH, or REORDERED when
 * that hash was signed at another position). After a per-event break, later checkpoints are
 * still read for the events before it, so the break reported is the smallest bad sequence.
 */
export function createChainVerifier(options: ChainVerifierOptions): ChainVerifier {
  const start = options.startSequence < 1n ? 1n : options.startSequence;
  const firstPrevHash = options.firstPrevHash ?? genesisHash;
  if (!hexHash.test(firstPrevHash)) throw new RangeError("firstPrevHash must be 64 lower-case hex digits");
  let tenant = options.tenant;
  const keyObjects = new Map<string, KeyObject | null>();
  let expected = start;
  let prevHash = firstPrevHash;
  let verified = 0n;
  let checkpointsVerified = 0n;
  let lastCheckpoint: bigint | undefined;
  // Hashes of the verified events since the last checkpoint: hashes[i] is sequence bufferStart + i.
  let bufferStart = start;
  let hashes: string[] = [];
  const waiting: AuditCheckpoint[] = [];
  let broken: Break | undefined;
  // A gap at `broken.sequence` is MISSING unless that sequence turns up later (REORDERED).
  let gapOpen = false;
  // After a per-event break, checkpoints can still show an earlier (smaller) bad sequence.
  let earlierStillPossible = false;

  const keyOf = (keyId: string): KeyObject | null => {
    if (!keyObjects.has(keyId)) {
      const raw = options.keys.get(keyId);
      let key: KeyObject | null = null;
      try {
        key = raw ? ed25519PublicKeyOf(raw) : null;
      } catch {
        key = null;
      }
      keyObjects.set(keyId, key);
    }
    return keyObjects.get(keyId)!;
  };

  const breakAt = (sequence: bigint, kind: AuditChainBreak, reason: string): void => {
    broken = { sequence, kind, reason: `sequence ${sequence}: ${reason}` };
  };

  /** The signature, key and tenant of a checkpoint, or why they fail. */
  function authenticity(cp: AuditCheckpoint): string | undefined {
    const key = keyOf(cp.keyId);
    if (!key) return `the checkpoint at sequence ${cp.sequence} is signed by key ${JSON.stringify(cp.keyId)}, which is not trusted`;
    if (!isCheckpointSignedBy(cp, key)) return `the signature of the checkpoint at sequence ${cp.sequence} does not verify`;
    tenant ??= cp.tenant;
    if (cp.tenant !== tenant) return `the checkpoint at sequence ${cp.sequence} is for tenant ${JSON.stringify(cp.tenant)}, not ${JSON.stringify(tenant)}`;
    if (cp.sequence < cp.firstSequence || BigInt(cp.eventHashes.length) !== 32n * (cp.sequence - cp.firstSequence + 1n)) {
      return `the checkpoint at sequence ${cp.sequence} does not list one hash per sequence ${cp.firstSequence}..${cp.sequence}`;
    }
    if (Buffer.from(cp.eventHashes.subarray(cp.eventHashes.length - 32)).toString("hex") !== cp.hash) {
      return `the checkpoint at sequence ${cp.sequence} signs a head hash that is not its last event hash`;
    }
    return undefined;
  }

  /** Compares the signed hashes with the buffered ones up to `upTo`; the first difference, if any. */
  function firstDifference(cp: AuditCheckpoint, upTo: bigint): Break | undefined {
    const signed = Buffer.from(cp.eventHashes.buffer, cp.eventHashes.byteOffset, cp.eventHashes.byteLength).toString("hex");
    const from = cp.firstSequence > bufferStart ? cp.firstSequence : bufferStart;
    const to = cp.sequence < upTo ? cp.sequence : upTo;
    for (let s = from; s <= to && s - bufferStart < BigInt(hashes.length); s++) {
      const ours = hashes[Number(s - bufferStart)];
      const at = Number(s - cp.firstSequence) * 64;
      if (signed.slice(at, at + 64) === ours) continue;
      let elsewhere = -1;
      for (let i = 0; i < signed.length && elsewhere < 0; i += 64) if (signed.slice(i, i + 64) === ours) elsewhere = i / 64;
      return elsewhere >= 0
        ? { sequence: s, kind: AuditChainBreak.REORDERED, reason: `sequence ${s}: its hash is signed for sequence ${cp.firstSequence + BigInt(elsewhere)} in the checkpoint at ${cp.sequence} (reordered)` }
        : { sequence: s, kind: AuditChainBreak.CHECKPOINT_MISMATCH, reason: `sequence ${s}: hash differs from the one signed in the checkpoint at sequence ${cp.sequence} (chain recomputed after a change)` };
    }
    return undefined;
  }

  /** The first sequence the next checkpoint must sign: after the previous one, or the start. */
  const firstUnsigned = () => (lastCheckpoint === undefined ? start : lastCheckpoint + 1n);

  /** Checks a checkpoint against the events verified up to `upTo`; false (and a break) when it fails. */
  function checkCheckpoint(cp: AuditCheckpoint, upTo: bigint): boolean {
    const first = firstUnsigned();
    if (lastCheckpoint !== undefined && cp.sequence <= lastCheckpoint) {
      breakAt(cp.sequence, AuditChainBreak.CHECKPOINT_MISMATCH, `a second checkpoint for sequence ${cp.sequence}, after the one at ${lastCheckpoint}`);
      return false;
    }
    // A checkpoint that cannot be trusted proves nothing: the events it should sign are the break.
    const fault = authenticity(cp);
    if (fault) {
      breakAt(first, AuditChainBreak.CHECKPOINT_MISMATCH, fault);
      return false;
    }
    if (lastCheckpoint === undefined ? cp.firstSequence > start : cp.firstSequence !== first) {
      breakAt(first, AuditChainBreak.CHECKPOINT_MISMATCH, `no checkpoint signs sequences ${first}..${cp.firstSequence - 1n} (a checkpoint is missing)`);
      return false;
    }
    broken = firstDifference(cp, upTo);
    return !broken;
  }

  /** Checks the checkpoints whose events have all been verified. */
  function drainWaiting(): void {
    while (!broken && waiting.length > 0 && waiting[0].sequence < expected) {
      const cp = waiting.shift()!;
      if (!checkCheckpoint(cp, cp.sequence)) return;
      checkpointsVerified++;
      lastCheckpoint = cp.sequence;
      hashes = hashes.slice(Number(cp.sequence + 1n - bufferStart));
      bufferStart = cp.sequence + 1n;
    }
  }

  /**
   * After a break at B, authentic checkpoints are still read for the verified events before B:
   * one missing among them, or a signed hash that differs, is a smaller break. `lookFrom` is the
   * first of those events no checkpoint has covered yet.
   */
  let lookFrom = start;
  let lookFromStart = true;
  function lookForEarlier(cp: AuditCheckpoint): void {
    if (!broken || cp.sequence < lookFrom || authenticity(cp) !== undefined) return;
    const end = broken.sequence - 1n;
    const earlier = (b: Break | undefined) => {
      if (b) broken = b;
      if (b) gapOpen = false;
      if (b || cp.sequence >= end) earlierStillPossible = false;
    };
    if (lookFromStart ? cp.firstSequence > lookFrom : cp.firstSequence !== lookFrom) {
      return earlier({ sequence: lookFrom, kind: AuditChainBreak.CHECKPOINT_MISMATCH, reason: `sequence ${lookFrom}: no checkpoint signs sequences ${lookFrom}..${cp.firstSequence - 1n} (a checkpoint is missing)` });
    }
    earlier(firstDifference(cp, end));
    lookFrom = cp.sequence + 1n;
    lookFromStart = false;
  }

  function onEventBreak(): void {
    earlierStillPossible = hashes.length > 0;
    lookFrom = firstUnsigned();
    lookFromStart = lastCheckpoint === undefined;
    for (const cp of waiting.splice(0)) if (earlierStillPossible) lookForEarlier(cp);
  }

  return {
    addEvent(event) {
      if (broken) {
        if (gapOpen && event.sequence === broken.sequence) {
          breakAt(broken.sequence, AuditChainBreak.REORDERED, `found later in the stream, out of its place (reordered)`);
          gapOpen = false;
        }
        return;
      }
      if (event.sequence !== expected) {
        if (event.sequence > expected) {
          breakAt(expected, AuditChainBreak.MISSING, `missing (the event after sequence ${expected - 1n} is sequence ${event.sequence})`);
          gapOpen = true;
        } else {
          // Two events claim this (already verified) position: the position is what is broken.
          breakAt(event.sequence, AuditChainBreak.REORDERED, event.sequence === expected - 1n ? "appears twice (duplicated)" : `appears again after sequence ${expected - 1n} (out of place)`);
        }
        return onEventBreak();
      }
      if (event.prevHash !== prevHash) {
        breakAt(expected, AuditChainBreak.REORDERED, `prev_hash is not the hash of sequence ${expected - 1n} (reordered or relinked)`);
        return onEventBreak();
      }
      if (!hexHash.test(event.hash) || chainHashOf(prevHash, event) !== event.hash) {
        breakAt(expected, AuditChainBreak.EDITED, "stored hash does not match its content (edited)");
        return onEventBreak();
      }
      hashes.push(event.hash);
      prevHash = event.hash;
      verified++;
      expected++;
      drainWaiting();
    },
    addCheckpoint(cp) {
      if (cp.sequence < start) return;
      if (broken) {
        if (earlierStillPossible) lookForEarlier(cp);
        return;
      }
      waiting.push(cp);
      drainWaiting();
    },
    finish() {
      // A checkpoint beyond the last event: the chain it signed was longer than what is here.
      if (!broken && waiting.length > 0 && checkCheckpoint(waiting[0], expected - 1n)) {
        breakAt(expected, AuditChainBreak.MISSING, `missing (the events end at ${expected - 1n}, a signed checkpoint covers up to ${waiting[0].sequence})`);
      }
      return {
        intact: !broken,
        firstBrokenSequence: broken?.sequence ?? 0n,
        breakKind: broken?.kind ?? AuditChainBreak.UNSPECIFIED,
        reason: broken?.reason ?? "",
        verifiedCount: verified,
        lastSequence: expected - 1n,
        lastHash: prevHash,
        checkpointsVerified,
        unsignedCount: BigInt(hashes.length),
      };
    },
  };
}

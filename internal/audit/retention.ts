/**
 * Audit retention: whole month partitions of a tenant are dropped once their month ended more
 * than the tenant's retention ago. Rows are never deleted (the table refuses it); a partition
 * goes at once, with its rows.
 *
 * Only the tables' owner can drop a partition, so the rules live in the database, in the
 * SECURITY DEFINER function audit_drop_expired_partitions (0007), which the store asks: the
 * database's clock decides what expired; a partition holding a sequence at or above the lowest
 * sequence that remains is kept (an event filed in an older month, a recorder's clock behind,
 * must not leave a hole in the kept chain); the horizon (the first sequence kept and the hash of
 * the event before it) is written with the drop.
 *
 * Verification trusts a horizon only when a checkpoint signed by a trusted key, older than the
 * retention cutoff, signed that hash at that sequence (chain-reader.ts): a horizon written by
 * hand cannot hide recent events.
 */
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { JetStreamClient } from "@nats-io/jetstream";
import type { AuditCheckpoint } from "../../gen/jobmesh/v1/audit_pb.js";
import type { Pool } from "../db/index.ts";
import { ed25519PublicKeyOf, isCheckpointSignedBy } from "./chain.ts";
import { publishedCheckpoints } from "./checkpoints-published.ts";
import { checkpointColumns, checkpointOfRow, type AuditCheckpointRow } from "./rows.ts";
import type { AuditTopology } from "../bus/topology.ts";

export interface DroppedPartition {
  tenantId: string;
  /** "YYYY-MM" */
  month: string;
  name: string;
}

/**
 * Drops the partitions whose month ended more than the tenant's retention (`perTenant`, else
 * `defaultDays`; less than 1 day keeps everything) before the database's now. `_now` is not
 * used (the database's clock decides; the parameter stays for the callers). Returns what it
 * dropped.
 */
export async function dropExpiredPartitions(db: Pool, _now: Date | undefined, defaultDays: number, perTenant?: Map<string, number>): Promise<DroppedPartition[]> {
  const days = Math.floor(defaultDays);
  if (days < 1 && (!perTenant || perTenant.size === 0)) return [];
  const { rows } = await db.query<{ tenant_id: string; month: string; name: string }>(
    "SELECT tenant_id::text, month, name FROM audit_drop_expired_partitions($1::integer, $2::jsonb)",
    [days, JSON.stringify(Object.fromEntries(perTenant ?? []))],
  );
  return rows.map((r) => ({ tenantId: r.tenant_id, month: r.month, name: r.name }));
}

/** Where a tenant's kept chain starts after retention, and whether that is proven. */
export interface RetentionHorizon {
  /** The first sequence kept. */
  firstSequence: bigint;
  /** The hash of the event before it (dropped with its partition). */
  prevHash: string;
  /** For people: what proves it, or why it is not trusted. */
  evidence: string;
  /** True when a trusted checkpoint, older than the retention cutoff, signed prevHash at firstSequence - 1. */
  trusted: boolean;
}

const dayMs = 86_400_000;

/**
 * The tenant's retention horizon (undefined when retention never dropped anything), checked:
 * the table is only a claim (a superuser can write it), so it is trusted only when a checkpoint
 * signed by a trusted key signed `prev_hash` at `first_sequence - 1`, and that checkpoint was
 * signed before the retention cutoff (now - retentionDays): only events signed that long ago
 * can be behind a horizon. The checkpoint is the published one when the streams still hold it
 * (preferred), else Postgres's: the streams keep 400 days, as long as retention, so the copy
 * outside has often gone by the time a partition goes; its signature is what cannot be forged.
 */
export async function retentionHorizonOf(
  db: Pool,
  js: JetStreamClient,
  topology: AuditTopology,
  tenantId: string,
  trust: { keys: Map<string, Uint8Array>; retentionDays: number; now?: Date },
): Promise<RetentionHorizon | undefined> {
  const { rows } = await db.query<{ first_sequence: string; prev_hash: string }>(
    "SELECT first_sequence::text, prev_hash FROM audit_retention_horizons WHERE tenant_id = $1",
    [tenantId],
  );
  if (rows.length === 0 || BigInt(rows[0].first_sequence) <= 1n) return undefined;
  const firstSequence = BigInt(rows[0].first_sequence);
  const prevHash = rows[0].prev_hash;
  const signedAt = firstSequence - 1n;
  const claim = (trusted: boolean, evidence: string): RetentionHorizon => ({ firstSequence, prevHash, trusted, evidence: `retention horizon at sequence ${firstSequence}: ${evidence}` });
  if (trust.retentionDays <= 0) return claim(false, "not trusted: retention keeps everything here");
  const cutoff = (trust.now ?? new Date()).getTime() - trust.retentionDays * dayMs;

  // Candidates: the Postgres checkpoint covering signedAt (also the hint where the stream's copy is).
  const { rows: stored } = await db.query<AuditCheckpointRow>(
    `SELECT ${checkpointColumns} FROM audit_checkpoints WHERE tenant_id = $1 AND sequence >= $2 ORDER BY sequence LIMIT 1`,
    [tenantId, signedAt.toString()],
  );
  const candidates: { cp: AuditCheckpoint; where: string }[] = [];
  const inPostgres = stored[0] && checkpointOfRow(stored[0]);
  const from = inPostgres?.checkpointTime ? new Date(Number(inPostgres.checkpointTime.seconds) * 1000 - 60_000) : undefined;
  for await (const cp of publishedCheckpoints(js, topology, tenantId, from)) {
    if (cp.firstSequence <= signedAt && cp.sequence >= signedAt) candidates.push({ cp, where: "published" });
    if (cp.sequence >= signedAt) break;
  }
  if (inPostgres) candidates.push({ cp: inPostgres, where: "in Postgres" });

  let why = `no checkpoint signs sequence ${signedAt}`;
  for (const { cp, where } of candidates) {
    const raw = trust.keys.get(cp.keyId);
    if (!raw || cp.tenant !== tenantId || !isCheckpointSignedBy(cp, ed25519PublicKeyOf(raw)) || cp.firstSequence > signedAt || cp.sequence < signedAt) {
      why = `the checkpoint at sequence ${cp.sequence} ${where} is not a valid signature of a trusted key over sequence ${signedAt}`;
      continue;
    }
    const at = Number(signedAt - cp.firstSequence) * 32;
    if (Buffer.from(cp.eventHashes.subarray(at, at + 32)).toString("hex") !== prevHash) {
      why = `the checkpoint at sequence ${cp.sequence} (${where}) signed another hash for sequence ${signedAt} than the horizon claims`;
      continue;
    }
    const signed = cp.checkpointTime ? timestampDate(cp.checkpointTime) : new Date(0);
    if (signed.getTime() >= cutoff) {
      why = `the checkpoint at sequence ${cp.sequence} (${where}) that signed sequence ${signedAt} is from ${signed.toISOString()}, not older than the retention cutoff ${new Date(cutoff).toISOString()}`;
      continue;
    }
    return claim(true, `the hash before it signed in the checkpoint at sequence ${cp.sequence} (${where}) of ${signed.toISOString()}`);
  }
  return claim(false, `not trusted: ${why}`);
}

/**
 * Audit retention: whole month partitions of a tenant are dropped once their month ended more
 * than the tenant's retention ago. Rows are never deleted (the table refuses it); a partition
 * goes at once, with its rows.
 *
 * The tenant's chain then starts later. audit_retention_horizons records where, in the same
 * transaction as the DROP: the first sequence still kept and the hash of the event before it.
 * Verification starts at that sequence and trusts that hash (it went with its partition), so a
 * row removed at the start of what is kept is still MISSING, not taken for retention. An event
 * stored in an older month than events before it (a recorder's clock behind) goes with its
 * month; the gap it leaves among the kept events is reported by verification.
 */
import type { Pool } from "../db/index.ts";
import { inTransaction } from "../db/index.ts";

export interface DroppedPartition {
  tenantId: string;
  /** "YYYY-MM" */
  month: string;
  name: string;
}

const partitionName = /^audit_events_([0-9a-f]{32})_(\d{4})(\d{2})$/;
const day = 86_400_000;

const uuidOf = (hex: string) => `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;

/**
 * Drops the partitions whose month ended more than the tenant's retention (`perTenant`, else
 * `defaultDays`; 0 or less keeps everything) before `now`. Returns what it dropped.
 */
export async function dropExpiredPartitions(db: Pool, now: Date, defaultDays: number, perTenant?: Map<string, number>): Promise<DroppedPartition[]> {
  const { rows } = await db.query<{ name: string }>(
    "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'audit_events'::regclass",
  );
  const expired = new Map<string, DroppedPartition[]>();
  for (const { name } of rows) {
    const m = partitionName.exec(name);
    if (!m) continue;
    const tenantId = uuidOf(m[1]);
    const days = perTenant?.get(tenantId) ?? defaultDays;
    // Date.UTC's month is 0-based: the 1-based month number is the index of the month after it.
    const end = Date.UTC(Number(m[2]), Number(m[3]), 1);
    if (days <= 0 || end + days * day > now.getTime()) continue;
    const list = expired.get(tenantId) ?? [];
    list.push({ tenantId, month: `${m[2]}-${m[3]}`, name });
    expired.set(tenantId, list);
  }
  const dropped: DroppedPartition[] = [];
  for (const [tenantId, partitions] of expired) {
    await inTransaction(db, async (client) => {
      const names = partitions.map((p) => p.name);
      const { rows: bounds } = await client.query<{ max_dropped: string | null; min_kept: string | null }>(
        `SELECT (SELECT max(sequence) FROM audit_events WHERE tenant_id = $1 AND tableoid::regclass::text = ANY($2::text[]))::text AS max_dropped,
                (SELECT min(sequence) FROM audit_events WHERE tenant_id = $1 AND NOT tableoid::regclass::text = ANY($2::text[]))::text AS min_kept`,
        [tenantId, names],
      );
      const { max_dropped, min_kept } = bounds[0];
      if (max_dropped !== null) {
        const afterDropped = BigInt(max_dropped) + 1n;
        const first = min_kept !== null && BigInt(min_kept) < afterDropped ? BigInt(min_kept) : afterDropped;
        const before = await client.query<{ hash: string }>("SELECT hash FROM audit_events WHERE tenant_id = $1 AND sequence = $2", [tenantId, (first - 1n).toString()]);
        await client.query(
          `INSERT INTO audit_retention_horizons AS h (tenant_id, first_sequence, prev_hash) VALUES ($1, $2, $3)
           ON CONFLICT (tenant_id) DO UPDATE SET first_sequence = EXCLUDED.first_sequence, prev_hash = EXCLUDED.prev_hash, update_time = now()
           WHERE EXCLUDED.first_sequence > h.first_sequence`,
          [tenantId, first.toString(), before.rows[0]?.hash ?? ""],
        );
      }
      for (const name of names) await client.query(`DROP TABLE IF EXISTS "${name}"`);
    });
    dropped.push(...partitions);
  }
  return dropped;
}

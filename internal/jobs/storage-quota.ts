/**
 * Per-tenant storage quotas: the bytes a tenant holds in uploads and results (tenant_storage,
 * kept by triggers in the transactions that write those rows; migration 0006) against its quota
 * (tenants.storage_quota_bytes, else the deployment's default).
 */
import type { Queryable } from "../db/index.ts";
import { StorageQuotaExceededError } from "./errors.ts";

export interface StorageUse {
  used: number;
  quota: number;
}

/** What the tenant holds and may hold. One primary-key read: cheap enough for every CreateJob. */
export async function storageUseOf(db: Queryable, tenantId: string, defaultQuota: number): Promise<StorageUse> {
  const { rows } = await db.query<{ used: string; quota: string }>({
    name: "storage-use",
    text: `SELECT coalesce(s.used_bytes, 0) AS used, coalesce(t.storage_quota_bytes, $2) AS quota
           FROM tenants t LEFT JOIN tenant_storage s ON s.tenant_id = t.id WHERE t.id = $1`,
    values: [tenantId, defaultQuota],
  });
  return rows[0] ? { used: Number(rows[0].used), quota: Number(rows[0].quota) } : { used: 0, quota: defaultQuota };
}

/**
 * Throws StorageQuotaExceededError when `adding` more bytes would pass the tenant's quota, or,
 * with `room`, when the tenant is at its quota already (a job that will store a result of a size
 * not known yet).
 */
export async function checkStorageQuota(db: Queryable, tenantId: string, defaultQuota: number, adding: number, options: { room?: boolean } = {}): Promise<StorageUse> {
  const use = await storageUseOf(db, tenantId, defaultQuota);
  if (use.used + adding > use.quota || (options.room && use.used >= use.quota)) throw new StorageQuotaExceededError(use.quota, use.used, adding);
  return use;
}

/**
 * The same check, in `tx`, with the tenant's counter row locked until `tx` ends: rows that add
 * bytes inserted in `tx` after it cannot pass the quota together with another transaction's.
 */
export async function reserveStorage(tx: Queryable, tenantId: string, defaultQuota: number, adding: number): Promise<void> {
  await tx.query("INSERT INTO tenant_storage (tenant_id) VALUES ($1) ON CONFLICT (tenant_id) DO NOTHING", [tenantId]);
  const { rows } = await tx.query<{ used: string; quota: string }>(
    `SELECT s.used_bytes AS used, coalesce(t.storage_quota_bytes, $2) AS quota
     FROM tenant_storage s JOIN tenants t ON t.id = s.tenant_id WHERE s.tenant_id = $1 FOR UPDATE OF s`,
    [tenantId, defaultQuota],
  );
  const use = { used: Number(rows[0].used), quota: Number(rows[0].quota) };
  if (use.used + adding > use.quota) throw new StorageQuotaExceededError(use.quota, use.used, adding);
}

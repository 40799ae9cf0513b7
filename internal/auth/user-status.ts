/**
 * Whether a user may still act: not disabled, not deleted. Access tokens are stateless and live
 * up to JOBMESH_ACCESS_TOKEN_TTL_SECONDS; without this check a disabled user kept working until
 * the token expired. The identity interceptor asks for every user token, so the answer is kept
 * in this process for half a second and in Redis until the user changes (disable and delete
 * remove the Redis entry), with Postgres behind it. A disabled user is refused everywhere within
 * about half a second, or within the Redis TTL if that removal failed.
 */
import type { Cache } from "../cache/index.ts";
import type { Queryable } from "../db/index.ts";

export interface UserStatus {
  /** Whether the user a token names (`users/{id}`) exists and is not disabled. */
  isActive(tenantId: string, subject: string): Promise<boolean>;
  /** Forgets what is known of a user, after it was disabled or deleted. */
  forget(tenantId: string, userId: string): Promise<void>;
}

const memoMs = 500;

export function createUserStatus(deps: { db: Queryable; cache: Cache; cacheSeconds: number }): UserStatus {
  const keyOf = (tenantId: string, userId: string) => `user-active:${tenantId}:${userId}`;
  const memo = new Map<string, number>();
  return {
    async isActive(tenantId, subject) {
      const userId = subject.replace(/^users\//, "");
      const key = keyOf(tenantId, userId);
      if ((memo.get(key) ?? 0) > Date.now()) return true;
      let active = (await deps.cache.redis.get(key).catch(() => null)) === "1";
      if (!active) {
        const { rows } = await deps.db.query("SELECT 1 FROM users WHERE tenant_id = $1 AND user_id = $2 AND NOT disabled", [tenantId, userId]);
        active = rows.length > 0;
        if (active) deps.cache.redis.set(key, "1", "EX", deps.cacheSeconds).catch(() => {});
      }
      if (active) {
        if (memo.size >= 10_000) memo.clear();
        memo.set(key, Date.now() + memoMs);
      }
      return active;
    },
    async forget(tenantId, userId) {
      memo.delete(keyOf(tenantId, userId));
      await deps.cache.invalidate(keyOf(tenantId, userId));
    },
  };
}

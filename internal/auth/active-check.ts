/**
 * "Is this principal still allowed?" for the identity interceptor, which asks on every call
 * with a token: a yes is kept in this process for half a second and in Redis for as long as the
 * loader says, and Postgres answers behind both. A no is never cached, so a principal that comes
 * back is seen at once; one that goes (revoked, disabled, deleted) is seen within the half second
 * once its Redis entry is removed (`forget`), or within the Redis lifetime if that removal failed.
 */
import type { Cache } from "../cache/index.ts";

export interface ActiveCheck {
  isActive(tenantId: string, id: string): Promise<boolean>;
  /** Removes what Redis and this process know of a principal. */
  forget(tenantId: string, id: string): Promise<void>;
}

const memoMs = 500;

export function createActiveCheck(deps: {
  cache: Cache;
  /** Redis key prefix, e.g. "user-active". */
  kind: string;
  /** Reads Postgres: whether the principal is active, and how long Redis may say so (ms; < 100: not cached). */
  load(tenantId: string, id: string): Promise<{ active: boolean; cacheMs: number }>;
}): ActiveCheck {
  const keyOf = (tenantId: string, id: string) => `${deps.kind}:${tenantId}:${id}`;
  const memo = new Map<string, number>();
  return {
    async isActive(tenantId, id) {
      const key = keyOf(tenantId, id);
      if ((memo.get(key) ?? 0) > Date.now()) return true;
      let active = (await deps.cache.redis.get(key).catch(() => null)) === "1";
      if (!active) {
        const loaded = await deps.load(tenantId, id);
        active = loaded.active;
        if (active && loaded.cacheMs >= 100) deps.cache.redis.set(key, "1", "PX", loaded.cacheMs).catch(() => {});
      }
      if (active) {
        if (memo.size >= 10_000) memo.clear();
        memo.set(key, Date.now() + memoMs);
      }
      return active;
    },
    async forget(tenantId, id) {
      memo.delete(keyOf(tenantId, id));
      await deps.cache.invalidate(keyOf(tenantId, id));
    },
  };
}

/**
 * "Is this principal still allowed, and as what?" for the identity interceptor, which asks on
 * every call with a token: an answer is kept in this process for half a second and in Redis for
 * as long as the loader says, and Postgres answers behind both. "Gone" is never cached, so a
 * principal that comes back is seen at once; one that goes (revoked, disabled, deleted) or
 * changes (a user's roles) is seen within the half second once its Redis entry is replaced by a
 * "forgotten" mark (`forget`), or within the Redis lifetime if that failed. Redis entries carry
 * a MAC (cache-mac.ts): one this deployment did not write is ignored and Postgres answers.
 *
 * Why a mark and not a delete: a check that read Postgres just before a revocation committed
 * could write its "active" answer into Redis just after the revocation deleted the entry, and
 * it would stand for the whole Redis lifetime. Answers are written only where nothing is (NX),
 * and the mark stays for as long as any answer may be kept, so such a late write finds it.
 */
import type { Cache } from "../cache/index.ts";
import type { CacheMac } from "./cache-mac.ts";

const forgotten = "forgotten";

/** Replaces a value only while it is still the one read: an entry that failed its MAC is overwritten, a `forget` mark written since is not. */
const replaceIfUnchanged = `if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3]) end return 0`;

export interface ActiveCheck {
  /** What the loader said of an active principal (non-empty), or undefined when it is gone. */
  current(tenantId: string, id: string): Promise<string | undefined>;
  /** Removes what Redis and this process know of a principal. */
  forget(tenantId: string, id: string): Promise<void>;
}

const memoMs = 500;

export function createActiveCheck(deps: {
  cache: Cache;
  /** Seals what goes to Redis and checks what comes back. */
  mac: CacheMac;
  /** Redis key prefix, e.g. "user-status". */
  kind: string;
  /** The longest the loader lets Redis keep an answer (ms): how long a `forget` mark stays. */
  maxCacheMs: number;
  /**
   * Reads Postgres: a non-empty value for an active principal (undefined when gone), and how
   * long Redis may keep it (ms; < 100: not cached).
   */
  load(tenantId: string, id: string): Promise<{ value: string | undefined; cacheMs: number }>;
}): ActiveCheck {
  const keyOf = (tenantId: string, id: string) => `${deps.kind}:${tenantId}:${id}`;
  const memo = new Map<string, { value: string; until: number }>();
  /**
   * Lookups under way, one per principal: when an answer expires, every call of that principal in
   * the moment (2,000 WatchJob streams opened at once) shares one read of Redis and Postgres
   * instead of each taking a pool connection, which exhausted the pool.
   */
  const inFlight = new Map<string, Promise<string | undefined>>();

  async function lookup(key: string, tenantId: string, id: string): Promise<string | undefined> {
    const stored = await deps.cache.redis.get(key).catch(() => null);
    let value = stored && stored !== forgotten ? (await deps.mac.open(key, stored)) || undefined : undefined;
    if (value === undefined) {
      const loaded = await deps.load(tenantId, id);
      value = loaded.value || undefined;
      if (value !== undefined && loaded.cacheMs >= 100 && stored !== forgotten) {
        const sealed = await deps.mac.seal(key, value, loaded.cacheMs);
        const write = stored ? deps.cache.redis.eval(replaceIfUnchanged, 1, key, stored, sealed, loaded.cacheMs) : deps.cache.redis.set(key, sealed, "PX", loaded.cacheMs, "NX");
        write.catch(() => {});
      }
    }
    return value;
  }

  return {
    async current(tenantId, id) {
      const key = keyOf(tenantId, id);
      const memoed = memo.get(key);
      if (memoed && memoed.until > Date.now()) return memoed.value;
      let pending = inFlight.get(key);
      if (!pending) {
        const started: Promise<string | undefined> = lookup(key, tenantId, id).then(
          (value) => {
            // Memoed only if no `forget` came meanwhile (it removes the lookup from inFlight).
            if (inFlight.get(key) === started) {
              inFlight.delete(key);
              if (value !== undefined) {
                if (memo.size >= 10_000) memo.clear();
                memo.set(key, { value, until: Date.now() + memoMs });
              }
            }
            return value;
          },
          (error: unknown) => {
            if (inFlight.get(key) === started) inFlight.delete(key);
            throw error;
          },
        );
        inFlight.set(key, started);
        pending = started;
      }
      return pending;
    },
    async forget(tenantId, id) {
      const key = keyOf(tenantId, id);
      memo.delete(key);
      // A lookup that started before the change must neither be joined by later calls nor memo its answer.
      inFlight.delete(key);
      await deps.cache.redis.set(key, forgotten, "PX", Math.max(deps.maxCacheMs, 1000)).catch(() => deps.cache.invalidate(key));
    },
  };
}

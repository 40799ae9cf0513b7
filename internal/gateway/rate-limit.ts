/**
 * Rate limits at the edge, counted in Redis so every gateway replica shares them: per tenant and
 * per credential for a caller that authenticated, per client address for one that did not.
 * A request refused by its credential's bucket is not counted against its tenant's.
 *
 * The credential's and the tenant's buckets are counted at the same time (one Redis round trip of
 * latency, not two); when the credential refuses, the tenant's point is given back (the steady
 * window's, and the reserve's when the steady window was spent) before the answer. Until it is,
 * about one round trip, the tenant's other credentials see it spent: a credential pushing
 * against its limit borrows from its tenant only its requests in flight, never its refused ones.
 *
 * Each bucket is rate-limiter-flexible's BurstyRateLimiter (its answer to a token bucket, which
 * it does not offer as such): a steady limiter of `perSecond` requests in one-second windows, and
 * behind it a reserve of `burst - perSecond` more, drawn only when the steady window is spent and
 * refilled every `burst / perSecond` seconds (the time an empty bucket of `burst` takes to fill).
 * So a client may send `burst` requests at once, as from a full bucket, and is refused once both
 * are spent, told to retry when the steady window turns. A client that keeps pushing gets at most
 * `perSecond × (2 − perSecond / burst)` a second: above a true bucket's rate, by less than twice,
 * and exactly it when burst equals the rate. Each window is an atomic Lua increment in Redis.
 *
 * Redis being down never fails a request: a limiter that Redis does not answer (not connected,
 * an error, or slower than `storeTimeoutMs`) counts in this process's memory instead (the
 * library's insuranceLimiter), and onRedisError is told each time it does.
 */
import type { Redis } from "ioredis";
import { BurstyRateLimiter, RateLimiterMemory, RateLimiterRedis, RateLimiterRes, RLWrapperTimeouts, type RateLimiterAbstract } from "rate-limiter-flexible";
import type { GatewayConfig, RateBucket } from "../config/gateway.ts";

/** One token bucket, as configured: refilled at `perSecond` (a fraction for less than one a second), holding at most `burst`. */
export type Bucket = RateBucket;

/** The three buckets, as configured (JOBMESH_GATEWAY_RATE_PER_* and _BURST_PER_*). */
export type RateLimitSettings = GatewayConfig["rateLimits"];

/** What one request was told by the buckets it counted against: the most restrictive of them. */
export interface RateLimitOutcome {
  allowed: boolean;
  /** Requests in the policy's window. */
  limit: number;
  /** Requests left in the current window (the reserve for bursts is not advertised). */
  remaining: number;
  /** Seconds until the current window turns. */
  resetSeconds: number;
  /** The bucket this outcome is of: "tenant", "credential" or "address". */
  policy: string;
  /** Window length in seconds, for RateLimit-Policy. */
  windowSeconds: number;
  /** Set when refused: whole seconds to wait. */
  retryAfterSeconds?: number;
}

export interface EdgeRateLimiter {
  /**
   * Consumes one request from each bucket that applies: per tenant and per credential for an
   * authenticated caller, per client address for an anonymous one. Returns the most restrictive outcome.
   */
  consume(keys: { tenantId?: string; credentialKey?: string; clientAddress?: string }): Promise<RateLimitOutcome>;
  /** Waits for the counts in flight, so the Redis client can be closed after. */
  close(): Promise<void>;
}

export interface EdgeRateLimiterDeps {
  /** ioredis client; give it `enableOfflineQueue: false` so a lost connection answers at once. */
  redis: Redis;
  /** `${namespace}:gw:rl`. */
  keyPrefix: string;
  settings: RateLimitSettings;
  /** Told each time a count falls back to memory because Redis did not answer. */
  onRedisError?: (error: unknown) => void;
  /** How long a count waits for Redis before it is made in memory instead. Default 500 ms. */
  storeTimeoutMs?: number;
}

type PolicyName = "tenant" | "credential" | "address";

interface CountedBucket {
  policy: PolicyName;
  limiter: RateLimiterAbstract | BurstyRateLimiter;
  limit: number;
  windowSeconds: number;
  /** Takes back one request counted with `consume`, given the steady window's count it answered. */
  giveBack(key: string, steadyCount: number): Promise<void>;
}

/** One bucket's answer, and the steady window's count after it (undefined when nothing was counted). */
interface Counted {
  outcome: RateLimitOutcome;
  steadyCount?: number;
}

/** The steady part of a bucket as a fixed window: whole requests over whole seconds. */
function steadyWindow(perSecond: number): { points: number; duration: number } {
  if (!(perSecond > 0)) throw new RangeError(`a rate limit needs a positive rate, got ${perSecond}`);
  if (perSecond >= 1) return { points: Math.floor(perSecond), duration: 1 };
  return { points: 1, duration: Math.ceil(1 / perSecond) };
}

export function createEdgeRateLimiter(deps: EdgeRateLimiterDeps): EdgeRateLimiter {
  const { redis } = deps;
  const storeTimeoutMs = deps.storeTimeoutMs ?? 500;
  const report = deps.onRedisError ?? (() => {});

  /** The in-memory stand-in for one Redis limiter; it is only asked when Redis was not. */
  class InsuranceLimiter extends RateLimiterMemory {
    override consume(key: string | number, points?: number, options?: { [key: string]: unknown }): Promise<RateLimiterRes> {
      report(new Error(`rate limits counted in memory: Redis (${redis.status}) did not answer within ${storeTimeoutMs} ms or failed`));
      return super.consume(key, points, options);
    }
  }

  function storeLimiter(keyPrefix: string, points: number, duration: number): RateLimiterAbstract {
    const inRedis = new RateLimiterRedis({
      storeClient: redis,
      keyPrefix,
      points,
      duration,
      // A connection that is not ready answers at once from memory instead of queueing the count.
      rejectIfRedisNotReady: true,
      insuranceLimiter: new InsuranceLimiter({ keyPrefix, points, duration }),
    });
    // A Redis that is connected but does not answer (paused, overloaded) is waited for this long.
    return new RLWrapperTimeouts({ limiter: inRedis, timeoutMs: storeTimeoutMs });
  }

  function bucketOf(policy: PolicyName, bucket: Bucket): CountedBucket {
    const steady = steadyWindow(bucket.perSecond);
    const prefix = `${deps.keyPrefix}:${policy}`;
    const primary = storeLimiter(prefix, steady.points, steady.duration);
    const reserve = Math.floor(bucket.burst) - steady.points;
    const reserveLimiter = reserve > 0 ? storeLimiter(`${prefix}:burst`, reserve, Math.max(1, Math.ceil(bucket.burst / bucket.perSecond))) : undefined;
    return {
      policy,
      limiter: reserveLimiter ? new BurstyRateLimiter(primary, reserveLimiter) : primary,
      limit: steady.points,
      windowSeconds: steady.duration,
      async giveBack(key, steadyCount) {
        // BurstyRateLimiter has no reward of its own: it counts in the steady window always, and in
        // the reserve too once the steady window's count passed its points.
        await Promise.all([primary.reward(key), ...(reserveLimiter && steadyCount > steady.points ? [reserveLimiter.reward(key)] : [])]);
      },
    };
  }

  const buckets = {
    tenant: bucketOf("tenant", deps.settings.perTenant),
    credential: bucketOf("credential", deps.settings.perCredential),
    address: bucketOf("address", deps.settings.perAddress),
  };
  const inFlight = new Set<Promise<unknown>>();

  async function count(bucket: CountedBucket, key: string): Promise<Counted> {
    const base = { policy: bucket.policy, limit: bucket.limit, windowSeconds: bucket.windowSeconds };
    try {
      const res = await bucket.limiter.consume(key);
      return { outcome: { ...base, allowed: true, remaining: res.remainingPoints, resetSeconds: secondsOf(res.msBeforeNext) }, steadyCount: res.consumedPoints };
    } catch (error) {
      if (error instanceof RateLimiterRes) {
        const wait = Math.max(1, secondsOf(error.msBeforeNext));
        return { outcome: { ...base, allowed: false, remaining: 0, resetSeconds: wait, retryAfterSeconds: wait }, steadyCount: error.consumedPoints };
      }
      // The insurance limiter answers every store failure; anything else is a fault of ours, and
      // the request is let through rather than failed for it (nothing was counted to give back).
      report(error);
      return { outcome: { ...base, allowed: true, remaining: bucket.limit, resetSeconds: bucket.windowSeconds } };
    }
  }

  /** Returns a point counted for a request that was refused elsewhere; a failure to is reported, never thrown. */
  async function giveBack(bucket: CountedBucket, key: string, counted: Counted): Promise<void> {
    if (counted.steadyCount === undefined) return;
    try {
      await bucket.giveBack(key, counted.steadyCount);
    } catch (error) {
      report(error);
    }
  }

  return {
    async consume(keys) {
      const counting = (async (): Promise<RateLimitOutcome> => {
        if (keys.tenantId === undefined && keys.credentialKey === undefined) {
          // An anonymous request whose address is unknown shares one bucket with all such: never unlimited.
          return (await count(buckets.address, keys.clientAddress ?? "unknown")).outcome;
        }
        const [credential, tenant] = await Promise.all([
          keys.credentialKey === undefined ? undefined : count(buckets.credential, keys.credentialKey),
          keys.tenantId === undefined ? undefined : count(buckets.tenant, keys.tenantId),
        ]);
        if (credential && !credential.outcome.allowed) {
          // A credential that is being refused does not spend its tenant's budget, so it cannot
          // starve the tenant's other credentials.
          if (tenant) await giveBack(buckets.tenant, keys.tenantId!, tenant);
          return credential.outcome;
        }
        return mostRestrictive([credential, tenant].flatMap((counted) => (counted ? [counted.outcome] : [])));
      })();
      inFlight.add(counting);
      try {
        return await counting;
      } finally {
        inFlight.delete(counting);
      }
    },
    async close() {
      await Promise.allSettled([...inFlight]);
    },
  };
}

function secondsOf(ms: number): number {
  return Math.max(0, Math.ceil(ms / 1000));
}

/** A refusal before any allowance (the longest wait first); among allowances, the fewest left. */
function mostRestrictive(outcomes: RateLimitOutcome[]): RateLimitOutcome {
  return outcomes.reduce((worst, next) => {
    if (worst.allowed !== next.allowed) return next.allowed ? worst : next;
    if (!next.allowed) return (next.retryAfterSeconds ?? 0) > (worst.retryAfterSeconds ?? 0) ? next : worst;
    return next.remaining < worst.remaining ? next : worst;
  });
}

/**
 * The headers of draft-ietf-httpapi-ratelimit-headers (draft 11, structured fields):
 * `RateLimit-Policy: "tenant";q=500;w=1` and `RateLimit: "tenant";r=499;t=1`, and, when the
 * request was refused, `Retry-After` in whole seconds.
 */
export function rateLimitHeaders(outcome: RateLimitOutcome): Headers {
  const name = sfString(outcome.policy);
  const headers = new Headers({
    "RateLimit-Policy": `${name};q=${outcome.limit};w=${outcome.windowSeconds}`,
    RateLimit: `${name};r=${outcome.remaining};t=${outcome.resetSeconds}`,
  });
  if (!outcome.allowed) headers.set("Retry-After", String(outcome.retryAfterSeconds ?? Math.max(1, outcome.resetSeconds)));
  return headers;
}

/** An sf-string (RFC 9651 §3.3.3): quoted, with `"` and `\` escaped. */
function sfString(value: string): string {
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

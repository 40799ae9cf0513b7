/**
 * Redis: a cache that can only make things faster. Every operation has a short timeout and
 * fails soft: with Redis down a read-through falls through to its loader and the caller never
 * sees an error (Redis holds nothing that cannot be rebuilt).
 */
import { Redis } from "ioredis";
import type { Meter } from "@opentelemetry/api";
import type { Logger } from "../telemetry/index.ts";

export interface CacheOptions {
  url: string;
  /** Prefix of every key, so deployments and test runs can share one Redis. */
  prefix: string;
  meter: Meter;
  log: Logger;
}

/** Encodes cached values; protobuf messages use their binary form. */
export interface Codec<T> {
  encode(value: T): Uint8Array | string;
  decode(bytes: Buffer): T;
}

export interface Cache {
  redis: Redis;
  /** Returns the cached value, or loads, stores and returns it. `undefined` is never cached. */
  readThrough<T>(cacheName: string, key: string, ttlSeconds: number, codec: Codec<T>, load: () => Promise<T | undefined>): Promise<T | undefined>;
  /** Deletes keys; failures are logged, not thrown (the TTL bounds any staleness). */
  invalidate(...keys: string[]): Promise<void>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

export function createCache(options: CacheOptions): Cache {
  const redis = new Redis(options.url, {
    keyPrefix: `${options.prefix}:`,
    // Fail fast instead of queueing while disconnected: a cache miss is cheaper than a wait.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: 250,
    lazyConnect: false,
    retryStrategy: (attempt) => Math.min(attempt * 200, 2000),
  });
  let lastErrorLog = 0;
  redis.on("error", (error: Error) => {
    // A dead Redis emits an error per reconnect attempt; keep the log readable.
    if (Date.now() - lastErrorLog > 10_000) {
      lastErrorLog = Date.now();
      options.log.warn({ err: error.message }, "redis unavailable; cache falls through");
    }
  });
  const hits = options.meter.createCounter("cache.hits", { description: "Cache reads answered by Redis" });
  const misses = options.meter.createCounter("cache.misses", { description: "Cache reads that went to the loader" });
  const errors = options.meter.createCounter("cache.errors", { description: "Cache operations that failed" });
  // The ratio since start, per cache, so a dashboard needs no PromQL to show it.
  const tally = new Map<string, { hits: number; misses: number }>();
  const count = (cacheName: string, hit: boolean) => {
    const t = tally.get(cacheName) ?? { hits: 0, misses: 0 };
    if (hit) t.hits++;
    else t.misses++;
    tally.set(cacheName, t);
    (hit ? hits : misses).add(1, { cache: cacheName });
  };
  options.meter
    .createObservableGauge("cache.hit_ratio", { description: "Share of cache reads answered by Redis since start" })
    .addCallback((result) => {
      for (const [cacheName, t] of tally) result.observe(t.hits / (t.hits + t.misses), { cache: cacheName });
    });

  return {
    redis,
    async readThrough(cacheName, key, ttlSeconds, codec, load) {
      const attrs = { cache: cacheName };
      try {
        const cached = await redis.getBuffer(key);
        if (cached) {
          count(cacheName, true);
          return codec.decode(cached);
        }
      } catch {
        errors.add(1, attrs);
      }
      count(cacheName, false);
      const value = await load();
      if (value !== undefined) {
        redis.set(key, Buffer.from(codec.encode(value)), "EX", ttlSeconds).catch(() => errors.add(1, attrs));
      }
      return value;
    },
    async invalidate(...keys) {
      if (keys.length === 0) return;
      try {
        await redis.del(...keys);
      } catch (error) {
        errors.add(1, { cache: "invalidate" });
        options.log.warn({ err: (error as Error).message, keys }, "cache invalidation failed; entries expire by TTL");
      }
    },
    async ping() {
      await redis.ping();
    },
    async close() {
      redis.disconnect();
    },
  };
}

import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { createEdgeRateLimiter, rateLimitHeaders, type Bucket, type RateLimitOutcome, type RateLimitSettings } from "./rate-limit.ts";

const redisUrl = Deno.env.get("JOBMESH_TEST_REDIS_URL") ?? "redis://127.0.0.1:6379";

// Rates below one a second make windows of several seconds, so a test on a busy machine does not
// see a window turn between two of its requests.
const slow: Bucket = { perSecond: 0.2, burst: 3 }; // 1 request per 5 s window, plus a reserve of 2
const roomy: Bucket = { perSecond: 1000, burst: 1000 };

/** A limiter over the real Redis under a prefix of its own, removed afterwards. */
async function withLimiter(settings: RateLimitSettings, run: (limiter: ReturnType<typeof createEdgeRateLimiter>, redisErrors: unknown[]) => Promise<void>) {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1, enableOfflineQueue: false });
  await new Promise<void>((resolve, reject) => {
    redis.once("ready", () => resolve());
    redis.once("error", reject);
  });
  const keyPrefix = `jobmesh-test:gw:rl:${crypto.randomUUID()}`;
  const redisErrors: unknown[] = [];
  // A generous store timeout: these tests are about the counts in Redis, not about a slow Redis.
  const limiter = createEdgeRateLimiter({ redis, keyPrefix, settings, onRedisError: (e) => redisErrors.push(e), storeTimeoutMs: 10_000 });
  try {
    await run(limiter, redisErrors);
  } finally {
    await limiter.close();
    const keys = await redis.keys(`${keyPrefix}:*`);
    if (keys.length > 0) await redis.del(...keys);
    await redis.quit();
  }
}

async function consumeUntilRefused(consume: () => Promise<RateLimitOutcome>, max = 20): Promise<{ allowed: number; refusal: RateLimitOutcome }> {
  for (let allowed = 0; allowed < max; allowed++) {
    const outcome = await consume();
    if (!outcome.allowed) return { allowed, refusal: outcome };
  }
  assert.fail(`not refused after ${max} requests`);
}

Deno.test("rate limit - a burst is let through, then refused with Retry-After and RateLimit headers", async () => {
  await withLimiter({ perTenant: slow, perCredential: roomy, perAddress: roomy }, async (limiter, redisErrors) => {
    const first = await limiter.consume({ tenantId: "t1", credentialKey: "t1:users/a" });
    assert.equal(first.allowed, true);
    assert.equal(first.policy, "tenant", "the tighter bucket is the one reported");
    const { allowed, refusal } = await consumeUntilRefused(() => limiter.consume({ tenantId: "t1", credentialKey: "t1:users/a" }));
    assert.equal(allowed + 1, slow.burst, "the whole burst, and no more");
    assert.equal(refusal.policy, "tenant");
    assert.ok(refusal.retryAfterSeconds! >= 1 && refusal.retryAfterSeconds! <= 5, `retry after ${refusal.retryAfterSeconds}`);

    const headers = rateLimitHeaders(refusal);
    assert.equal(headers.get("ratelimit-policy"), '"tenant";q=1;w=5');
    assert.equal(headers.get("ratelimit"), `"tenant";r=0;t=${refusal.resetSeconds}`);
    assert.equal(headers.get("retry-after"), String(refusal.retryAfterSeconds));
    assert.deepEqual(redisErrors, [], "counted in Redis throughout");
  });
});

Deno.test("rate limit - tenants are counted apart, and so are the credentials of one tenant", async () => {
  await withLimiter({ perTenant: slow, perCredential: { perSecond: 0.2, burst: 2 }, perAddress: roomy }, async (limiter) => {
    const spent = await consumeUntilRefused(() => limiter.consume({ tenantId: "t1", credentialKey: "t1:apiKeys/k1" }));
    assert.equal(spent.refusal.policy, "credential");
    assert.equal(spent.allowed, 2);

    const sameTenantOtherKey = await limiter.consume({ tenantId: "t1", credentialKey: "t1:apiKeys/k2" });
    assert.equal(sameTenantOtherKey.allowed, true, "another credential of the tenant has its own bucket");
    const tenantSpent = await limiter.consume({ tenantId: "t1", credentialKey: "t1:apiKeys/k3" });
    assert.equal(tenantSpent.allowed, false, "but the tenant's bucket is shared by all its credentials");
    assert.equal(tenantSpent.policy, "tenant");

    const otherTenant = await limiter.consume({ tenantId: "t2", credentialKey: "t2:apiKeys/k1" });
    assert.equal(otherTenant.allowed, true, "another tenant is not held back");
  });
});

Deno.test("rate limit - a credential being refused does not spend its tenant's budget, even with its refusals in flight together", async () => {
  // The credential's bucket holds one request, the tenant's three (one steady, two in reserve).
  await withLimiter({ perTenant: slow, perCredential: { perSecond: 0.2, burst: 1 }, perAddress: roomy }, async (limiter, redisErrors) => {
    assert.equal((await limiter.consume({ tenantId: "t1", credentialKey: "t1:apiKeys/noisy" })).allowed, true);
    const refusals = await Promise.all(Array.from({ length: 6 }, () => limiter.consume({ tenantId: "t1", credentialKey: "t1:apiKeys/noisy" })));
    for (const refusal of refusals) {
      assert.equal(refusal.allowed, false);
      assert.equal(refusal.policy, "credential");
    }
    // The tenant spent one request on the noisy key: two are left, from its reserve.
    assert.equal((await limiter.consume({ tenantId: "t1", credentialKey: "t1:apiKeys/quiet-1" })).allowed, true, "the tenant's reserve is intact");
    assert.equal((await limiter.consume({ tenantId: "t1", credentialKey: "t1:apiKeys/quiet-2" })).allowed, true);
    const spent = await limiter.consume({ tenantId: "t1", credentialKey: "t1:apiKeys/quiet-3" });
    assert.equal(spent.allowed, false, "and then the tenant's bucket is spent");
    assert.equal(spent.policy, "tenant");
    assert.deepEqual(redisErrors, [], "counted (and given back) in Redis throughout");
  });
});

Deno.test("rate limit - anonymous requests count by client address, apart from authenticated ones", async () => {
  await withLimiter({ perTenant: roomy, perCredential: roomy, perAddress: slow }, async (limiter) => {
    const spent = await consumeUntilRefused(() => limiter.consume({ clientAddress: "192.0.2.1" }));
    assert.equal(spent.allowed, slow.burst);
    assert.equal(spent.refusal.policy, "address");
    assert.equal((await limiter.consume({ clientAddress: "192.0.2.2" })).allowed, true, "another address has its own bucket");
    const authenticated = await limiter.consume({ tenantId: "t1", credentialKey: "t1:users/a", clientAddress: "192.0.2.1" });
    assert.equal(authenticated.allowed, true, "an authenticated caller is not counted by its address");
    assert.notEqual(authenticated.policy, "address");
  });
});

Deno.test("rate limit - Redis unreachable: requests are still answered, limited in memory, and it is reported", async () => {
  // Nothing listens on port 1: the client never becomes ready.
  const redis = new Redis("redis://127.0.0.1:1", { maxRetriesPerRequest: 1, enableOfflineQueue: false, retryStrategy: () => null });
  redis.on("error", () => {});
  const redisErrors: unknown[] = [];
  const limiter = createEdgeRateLimiter({
    redis,
    keyPrefix: `jobmesh-test:gw:rl:${crypto.randomUUID()}`,
    settings: { perTenant: roomy, perCredential: roomy, perAddress: slow },
    onRedisError: (e) => redisErrors.push(e),
  });
  try {
    const spent = await consumeUntilRefused(() => limiter.consume({ clientAddress: "192.0.2.9" }));
    assert.equal(spent.allowed, slow.burst, "the same limits, counted in this process");
    assert.ok(redisErrors.length >= slow.burst, "each fallback is reported");
    assert.match(String(redisErrors[0]), /Redis/);
  } finally {
    await limiter.close();
    redis.disconnect();
  }
});

Deno.test("rate limit - a Redis that stops answering is waited for only storeTimeoutMs", async () => {
  // A server that answers ioredis's connection set-up (INFO for its ready check, +OK to the rest)
  // and then falls silent at the first script, as a paused Redis would.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const connections: Deno.Conn[] = [];
  const serving = (async () => {
    for await (const conn of listener) {
      connections.push(conn);
      const buffer = new Uint8Array(64 * 1024);
      for (;;) {
        const n = await conn.read(buffer).catch(() => null);
        if (n === null) break;
        for (const [name] of respCommands(new TextDecoder().decode(buffer.subarray(0, n)))) {
          if (/^eval/i.test(name)) continue;
          const info = "# Server\r\nloading:0\r\n";
          const answer = /^info$/i.test(name) ? `$${info.length}\r\n${info}\r\n` : "+OK\r\n";
          await conn.write(new TextEncoder().encode(answer)).catch(() => {});
        }
      }
    }
  })();
  const redis = new Redis(`redis://127.0.0.1:${listener.addr.port}`, { maxRetriesPerRequest: 1, enableOfflineQueue: false, retryStrategy: () => null });
  redis.on("error", () => {});
  const redisErrors: unknown[] = [];
  const limiter = createEdgeRateLimiter({
    redis,
    keyPrefix: "jobmesh-test:gw:rl:silent",
    settings: { perTenant: roomy, perCredential: roomy, perAddress: roomy },
    onRedisError: (e) => redisErrors.push(e),
    storeTimeoutMs: 200,
  });
  try {
    const deadline = Date.now() + 10_000;
    while (redis.status !== "ready" && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(redis.status, "ready");
    let timer: ReturnType<typeof setTimeout> | undefined;
    const gaveUp = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error("the count waited for the silent Redis")), 10_000)));
    const outcome = await Promise.race([limiter.consume({ clientAddress: "192.0.2.10" }), gaveUp]).finally(() => clearTimeout(timer));
    assert.equal(outcome.allowed, true);
    assert.ok(redisErrors.length >= 1, "the fallback is reported");
  } finally {
    redis.disconnect();
    await limiter.close();
    listener.close();
    for (const conn of connections) conn.close();
    await serving.catch(() => {});
  }
});

/** The commands in a chunk of RESP (arrays of bulk strings), enough for a fake server. */
function respCommands(chunk: string): string[][] {
  const commands: string[][] = [];
  let at = 0;
  const line = () => {
    const end = chunk.indexOf("\r\n", at);
    const text = chunk.slice(at, end);
    at = end + 2;
    return text;
  };
  while (at < chunk.length) {
    const count = Number(line().slice(1));
    const args: string[] = [];
    for (let i = 0; i < count; i++) {
      const length = Number(line().slice(1));
      args.push(chunk.slice(at, at + length));
      at += length + 2;
    }
    commands.push(args);
  }
  return commands;
}

Deno.test("rate limit headers - allowed: RateLimit fields only; refused: Retry-After too", () => {
  const allowed = rateLimitHeaders({ allowed: true, limit: 500, remaining: 499, resetSeconds: 1, policy: "tenant", windowSeconds: 1 });
  assert.equal(allowed.get("RateLimit-Policy"), '"tenant";q=500;w=1');
  assert.equal(allowed.get("RateLimit"), '"tenant";r=499;t=1');
  assert.equal(allowed.get("Retry-After"), null);
  const refused = rateLimitHeaders({ allowed: false, limit: 20, remaining: 0, resetSeconds: 1, policy: "address", windowSeconds: 1, retryAfterSeconds: 1 });
  assert.equal(refused.get("RateLimit"), '"address";r=0;t=1');
  assert.equal(refused.get("Retry-After"), "1");
});

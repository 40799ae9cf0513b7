/**
 * Login rate limits in Redis: failed logins per account and attempts per client address, each
 * counted in a fixed window that expires by itself. A limited caller waits out the rest of the
 * window; nothing locks an account for longer, so an attacker cannot lock a user out for good.
 * With Redis unreachable the limits are not enforced (Argon2id still bounds the guessing rate).
 */
import { createHash } from "node:crypto";
import type { Cache } from "../cache/index.ts";
import { TooManyLoginAttemptsError } from "./errors.ts";

export interface LoginLimitsDeps {
  cache: Cache;
  maxFailuresPerAccount: number;
  maxAttemptsPerIp: number;
  windowSeconds: number;
}

// INCR the counter, start its window on the first hit; returns [count, ms left in the window].
const countScript = `
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('PTTL', KEYS[1])}`;

const readScript = `return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('PTTL', KEYS[1])}`;

export function createLoginLimits(deps: LoginLimitsDeps) {
  const { redis } = deps.cache;
  const windowMs = deps.windowSeconds * 1000;
  const accountKey = (email: string, tenant: string) => `login:account:${createHash("sha256").update(`${tenant}\0${email.toLowerCase()}`).digest("hex")}`;
  const ipKey = (ip: string) => `login:ip:${ip}`;
  const retryAfter = (ms: number) => Math.max(1, Math.ceil(ms / 1000));

  async function run(script: string, key: string): Promise<[number, number] | undefined> {
    try {
      return (await redis.eval(script, 1, key, windowMs)) as [number, number];
    } catch {
      return undefined;
    }
  }

  return {
    /** Counts an attempt from `ip` and refuses it when the address or the account is over its limit. */
    async admit(email: string, tenant: string, ip: string | undefined): Promise<void> {
      if (ip) {
        const counted = await run(countScript, ipKey(ip));
        if (counted && counted[0] > deps.maxAttemptsPerIp) throw new TooManyLoginAttemptsError(retryAfter(counted[1]));
      }
      const failures = await run(readScript, accountKey(email, tenant));
      if (failures && failures[0] >= deps.maxFailuresPerAccount) throw new TooManyLoginAttemptsError(retryAfter(failures[1]));
    },
    async recordFailure(email: string, tenant: string): Promise<void> {
      await run(countScript, accountKey(email, tenant));
    },
    async recordSuccess(email: string, tenant: string): Promise<void> {
      await redis.del(accountKey(email, tenant)).catch(() => {});
    },
  };
}

export type LoginLimits = ReturnType<typeof createLoginLimits>;

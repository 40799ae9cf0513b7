/**
 * Login rate limits in Redis: failed logins per account and per client address, each counted in
 * a fixed window that expires by itself. A limited caller waits out the rest of the window;
 * nothing locks an account for longer, so an attacker cannot lock a user out for good.
 *
 * An attempt RESERVES a failure on every counter before the password is hashed, in one script,
 * so parallel attempts cannot all read "under the limit" and pass together: of N parallel wrong
 * passwords exactly `limit` are checked. A login that succeeds releases its reservation (the
 * failures of others in the window still count); one that fails keeps it. So a success costs no
 * budget, and a busy proxy's many successful users do not use up its address.
 *
 * Keys: the account is the RESOLVED tenant id and the lower-cased email (an email that names no
 * single account counts under tenant ""), so no tenant spelling gets a budget of its own; the
 * address is an IPv4 address or an IPv6 /64 (one host usually holds a whole /64).
 * With Redis unreachable the limits are not enforced (Argon2id still bounds the guessing rate).
 * A call that times out on a slow Redis (or a busy event loop) may have run there all the same,
 * so each attempt has an id, and its scripts answer a repeated call as they answered the first:
 * a timed-out reservation is asked again, never counted twice nor taken for granted.
 */
import { createHash, randomUUID } from "node:crypto";
import ipaddr from "ipaddr.js";
import type { Cache } from "../cache/index.ts";
import { TooManyLoginAttemptsError } from "./errors.ts";

export interface LoginLimitsDeps {
  cache: Cache;
  maxFailuresPerAccount: number;
  maxFailuresPerIp: number;
  windowSeconds: number;
}

/** A failure counted in advance; release it when the password turns out right. */
export interface LoginReservation {
  release(): Promise<void>;
}

// An attempt's record outlives any retry of its calls, and then goes by itself.
const recordTtlMs = 60_000;

// KEYS[1]: this attempt's record, then the counters; ARGV[1]: window in ms, ARGV[i]: the limit of
// KEYS[i]. Either every counter is under its limit and all are incremented (a new window starts
// at the first), or none is touched and the answer is the ms left in the window of a full one.
// The record keeps the answer, so a repeated call gets the same one.
const reserveScript = `
local seen = redis.call('GET', KEYS[1])
if seen == 'admitted' or seen == 'released' then return {1, 0} end
if seen then return {0, tonumber(string.sub(seen, 9))} end
for i = 2, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') >= tonumber(ARGV[i]) then
    local left = redis.call('PTTL', KEYS[i])
    redis.call('SET', KEYS[1], 'refused:' .. left, 'PX', ${recordTtlMs})
    return {0, left}
  end
end
for i = 2, #KEYS do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
end
redis.call('SET', KEYS[1], 'admitted', 'PX', ${recordTtlMs})
return {1, 0}`;

// Gives a reservation back once; a counter whose window ended meanwhile is gone and stays gone.
const releaseScript = `
if redis.call('GET', KEYS[1]) ~= 'admitted' then return 0 end
redis.call('SET', KEYS[1], 'released', 'PX', ${recordTtlMs})
for i = 2, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then redis.call('DECR', KEYS[i]) end
end
return 1`;

const released: LoginReservation = { release: () => Promise.resolve() };

const attemptsOnTimeout = 3;
const isTimeout = (error: unknown) => error instanceof Error && error.message === "Command timed out";

/** The bucket an address is counted in: IPv4 as is, IPv6 by its /64, anything else as given. */
export function addressBucket(address: string): string {
  if (!ipaddr.isValid(address)) return address;
  const parsed = ipaddr.process(address);
  if (parsed.kind() === "ipv4") return parsed.toString();
  return `${ipaddr.IPv6.networkAddressFromCIDR(`${parsed.toString()}/64`).toRFC5952String()}/64`;
}

export function createLoginLimits(deps: LoginLimitsDeps) {
  const { redis } = deps.cache;
  const windowMs = deps.windowSeconds * 1000;
  const accountKey = (tenantId: string, email: string) => `login:account:${createHash("sha256").update(`${tenantId}\0${email.trim().toLowerCase()}`).digest("hex")}`;
  const ipKey = (address: string) => `login:ip:${addressBucket(address)}`;

  /** Runs a script, again while it times out (the scripts answer a repeat alike); undefined when Redis fails. */
  async function evalOnce(script: string, keys: string[], ...args: (string | number)[]): Promise<unknown> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await redis.eval(script, keys.length, ...keys, ...args);
      } catch (error) {
        if (!isTimeout(error) || attempt === attemptsOnTimeout) return undefined;
      }
    }
  }

  return {
    /**
     * Counts a failure for the account and the address in advance, or throws
     * TooManyLoginAttemptsError when either is full. `tenantId` is the tenant the email resolved
     * to ("" when it named no single account).
     */
    async reserve(tenantId: string, email: string, clientAddress: string | undefined): Promise<LoginReservation> {
      const keys = [`login:attempt:${randomUUID()}`, accountKey(tenantId, email)];
      const limits = [deps.maxFailuresPerAccount];
      if (clientAddress) {
        keys.push(ipKey(clientAddress));
        limits.push(deps.maxFailuresPerIp);
      }
      const answer = (await evalOnce(reserveScript, keys, windowMs, ...limits)) as [number, number] | undefined;
      if (!answer) return released;
      if (answer[0] !== 1) throw new TooManyLoginAttemptsError(Math.max(1, Math.ceil((answer[1] > 0 ? answer[1] : windowMs) / 1000)));
      return {
        async release() {
          await evalOnce(releaseScript, keys);
        },
      };
    },
  };
}

export type LoginLimits = ReturnType<typeof createLoginLimits>;

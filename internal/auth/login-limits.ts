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
 */
import { createHash } from "node:crypto";
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

// KEYS: counters; ARGV[1]: window in ms, ARGV[1 + i]: the limit of KEYS[i]. Either every counter
// is under its limit and all are incremented (a new window starts at the first), or none is
// touched and the answer is the ms left in the window of a counter that is full.
const reserveScript = `
for i, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[i + 1]) then
    return {0, redis.call('PTTL', key)}
  end
end
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
end
return {1, 0}`;

// A counter whose window ended meanwhile is gone and stays gone.
const releaseScript = `
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 0`;

const released: LoginReservation = { release: () => Promise.resolve() };

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

  return {
    /**
     * Counts a failure for the account and the address in advance, or throws
     * TooManyLoginAttemptsError when either is full. `tenantId` is the tenant the email resolved
     * to ("" when it named no single account).
     */
    async reserve(tenantId: string, email: string, clientAddress: string | undefined): Promise<LoginReservation> {
      const keys = [accountKey(tenantId, email)];
      const limits = [deps.maxFailuresPerAccount];
      if (clientAddress) {
        keys.push(ipKey(clientAddress));
        limits.push(deps.maxFailuresPerIp);
      }
      let answer: [number, number];
      try {
        answer = (await redis.eval(reserveScript, keys.length, ...keys, windowMs, ...limits)) as [number, number];
      } catch {
        return released;
      }
      if (answer[0] !== 1) throw new TooManyLoginAttemptsError(Math.max(1, Math.ceil((answer[1] > 0 ? answer[1] : windowMs) / 1000)));
      return {
        async release() {
          await redis.eval(releaseScript, keys.length, ...keys).catch(() => {});
        },
      };
    },
  };
}

export type LoginLimits = ReturnType<typeof createLoginLimits>;

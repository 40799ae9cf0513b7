/**
 * Redis is a cache, not an authority: anyone who can write to it (a shared instance, another
 * tenant's tooling, an attacker on its network) must not be able to mint an identity by storing
 * "this key is an admin" or "this user is active". Every identity entry is sealed with an
 * HMAC-SHA256 over its Redis key and value, under a per-deployment secret kept in Postgres (every
 * process of the mesh reads Postgres, and whoever can write Postgres already decides identity).
 * An entry whose MAC does not verify is ignored, so the caller falls through to Postgres.
 *
 * The MAC also covers when the entry expires, and an expired one is refused whatever Redis says
 * of its TTL: otherwise an entry saved while it was true ("K is active", "U is an admin") could
 * be written back after the revocation or demotion, with no TTL, and stand for ever.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { Queryable } from "../db/index.ts";

export interface CacheMac {
  /** `value` sealed for the Redis key `key`, valid for `ttlMs` (give Redis the same TTL). */
  seal(key: string, value: string, ttlMs: number): Promise<string>;
  /** The value `sealed` carries when this deployment sealed it for `key` and it has not expired, else undefined. */
  open(key: string, sealed: string): Promise<string | undefined>;
}

const secretName = "identity-cache-mac";
const version = "v2";

async function loadSecret(db: Queryable): Promise<Buffer> {
  // The first process to ask creates it; every other one reads the same row.
  await db.query("INSERT INTO server_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", [secretName, randomBytes(32)]);
  const { rows } = await db.query<{ secret: Buffer }>("SELECT secret FROM server_secrets WHERE name = $1", [secretName]);
  return rows[0].secret;
}

// One secret per pool, loaded once: createApiKeys and createUserStatus each ask for it.
const byDb = new WeakMap<Queryable, CacheMac>();

/** The MAC of this deployment (the database `db` reads). */
export function cacheMacOf(db: Queryable): CacheMac {
  let mac = byDb.get(db);
  if (mac) return mac;
  let secret: Promise<Buffer> | undefined;
  const secretOnce = () => {
    secret ??= loadSecret(db).catch((error: unknown) => {
      secret = undefined;
      throw error;
    });
    return secret;
  };
  const tag = (key: Buffer, name: string, expires: string, value: string) => createHmac("sha256", key).update(`${name}\n${expires}\n${value}`).digest();
  mac = {
    async seal(name, value, ttlMs) {
      const expires = String(Date.now() + ttlMs);
      return `${version}.${tag(await secretOnce(), name, expires, value).toString("base64url")}.${expires}.${value}`;
    },
    async open(name, sealed) {
      const [v, given, expires, ...rest] = sealed.split(".");
      if (v !== version || given === undefined || expires === undefined || rest.length === 0) return undefined;
      if (!/^\d+$/.test(expires) || Number(expires) <= Date.now()) return undefined;
      const value = rest.join(".");
      const expected = tag(await secretOnce(), name, expires, value);
      const actual = Buffer.from(given, "base64url");
      return actual.length === expected.length && timingSafeEqual(actual, expected) ? value : undefined;
    },
  };
  byDb.set(db, mac);
  return mac;
}

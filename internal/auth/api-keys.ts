/**
 * API keys: `jmk_<prefix>_<secret>`, a fixed shape secret scanners recognise. The secret is
 * shown once; Postgres keeps its SHA-256. A verified key is cached in Redis (for the configured
 * seconds less one) and in the process for half a second; revocation deletes the Redis entry.
 * So a revoked key stops everywhere within half a second, and within 5 s even if the delete is
 * lost. Exchanging a key for a token reads Postgres only: a revoked key never mints a token.
 *
 * A key made by a key belongs to a chain: it acts for the principal at the root (the user who
 * made the first key), never above any key of the chain, and dies with any of them. Each row
 * keeps that root and its ancestors, so the check on every call is one lookup.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createHash, randomBytes } from "node:crypto";
import { type ApiKey, ApiKeySchema, ApiKeyState } from "../../gen/jobmesh/v1/auth_pb.js";
import type { Cache } from "../cache/index.ts";
import type { Pool } from "../db/index.ts";
import { keysetSql, pageSizeOf, parseFilter, parseOrderBy, splitPage, type KeysetPosition, type PageTokens } from "../paging/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { createActiveCheck } from "./active-check.ts";
import { cacheMacOf } from "./cache-mac.ts";
import { apiKeyPattern } from "./credentials.ts";
import { ApiKeyNotFoundError, InvalidTokenError } from "./errors.ts";
import { cappedRoles, roleEnum, type RoleName } from "../contract/roles.ts";
import type { TokenSubject } from "./tokens.ts";
import { loadUserStanding } from "./user-status.ts";
import { newId } from "./users.ts";

export interface ApiKeyRow {
  tenant_id: string;
  api_key_id: string;
  prefix: string;
  secret_hash: Buffer;
  display_name: string;
  roles: string[];
  creator: string;
  create_time: Date;
  expire_time: Date | null;
  last_used_time: Date | null;
  revoke_time: Date | null;
  /** The key that made this one, or null when a user (or the system) did. */
  parent_key_id: string | null;
  /** The principal at the root of the chain: "users/{id}" for keys a user started. */
  root_creator: string;
  /** Every key above this one, root first. */
  ancestor_key_ids: string[];
}

/** What a key may act as now: for whom, and with which roles at most. */
export interface ApiKeyChain {
  /** The root principal; a key acts for this user ("users/{id}") and answers to its status. */
  creator: string;
  /** The key's roles capped at every ancestor key's roles. */
  roles: string[];
}

/**
 * The user a chain answers to: its root when that is a user. A chain another principal started
 * (the system's bootstrap) answers to the key check alone. Decided here once for the per-call
 * check (rpc/identity.ts) and the exchange (verifyNow), so the two cannot drift apart.
 */
export function rootUserOf(chain: ApiKeyChain): string | undefined {
  return chain.creator.startsWith("users/") ? chain.creator : undefined;
}

/** The caller an API key stands for. */
export interface ApiKeyIdentity extends TokenSubject {
  expireTime: Date | null;
}

export const apiKeyName = (id: string) => `apiKeys/${id}`;
const apiKeyIdOf = (name: string) => name.replace(/^apiKeys\//, "");
const hashOf = (secret: string) => createHash("sha256").update(secret).digest();
const cacheKeyOf = (hash: Buffer) => `apikey:${hash.toString("hex")}`;

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/** `length` base62 characters, unbiased (bytes ≥ 248 are skipped). */
function randomBase62(length: number): string {
  let out = "";
  while (out.length < length) {
    for (const byte of randomBytes(length * 2)) {
      if (byte < 248 && out.length < length) out += alphabet[byte % 62];
    }
  }
  return out;
}

function stateOf(row: ApiKeyRow, now = Date.now()): ApiKeyState {
  if (row.revoke_time) return ApiKeyState.REVOKED;
  if (row.expire_time && row.expire_time.getTime() <= now) return ApiKeyState.EXPIRED;
  return ApiKeyState.ACTIVE;
}

export function toApiKey(row: ApiKeyRow): ApiKey {
  const ts = (d: Date | null) => (d ? timestampFromDate(d) : undefined);
  return create(ApiKeySchema, {
    name: apiKeyName(row.api_key_id),
    displayName: row.display_name,
    roles: row.roles.map(roleEnum),
    expireTime: ts(row.expire_time),
    state: stateOf(row),
    prefix: row.prefix,
    creator: row.creator,
    tenant: row.tenant_id,
    createTime: ts(row.create_time),
    lastUsedTime: ts(row.last_used_time),
    revokeTime: ts(row.revoke_time),
  });
}

export interface ApiKeysDeps {
  db: Pool;
  cache: Cache;
  pageTokens: PageTokens;
  log: Logger;
  /** Seconds a verified key is cached (≤ 5). */
  cacheSeconds: number;
}

const sortColumns: Record<string, string> = {
  create_time: "create_time",
  display_name: "display_name",
  last_used_time: "COALESCE(last_used_time, 'epoch')",
};

export function createApiKeys(deps: ApiKeysDeps) {
  const { db, cache } = deps;

  /** Cache lifetimes: a second under the promise, half for the in-process copy, half for the caller's next request. */
  const redisTtlMs = (expireTime: Date | null) => Math.min(deps.cacheSeconds * 1000 - 1000, expireTime ? expireTime.getTime() - Date.now() : Infinity);

  const mac = cacheMacOf(db);

  /**
   * The chain of an active key whose every ancestor is active too (a missing ancestor counts as
   * inactive), and when the first of them expires; undefined when any link is gone.
   */
  async function loadChain(tenantId: string, apiKeyId: string): Promise<{ chain: ApiKeyChain; expireTime: Date | null } | undefined> {
    const { rows } = await db.query<{ root_creator: string; roles: string[]; expire_time: Date | null; depth: number; active: number; ancestor_roles: string[] | null; ancestors_expire: Date | null }>(
      `SELECT k.root_creator, k.roles, k.expire_time, cardinality(k.ancestor_key_ids) AS depth,
              a.active, a.ancestor_roles, a.ancestors_expire
       FROM api_keys k
       CROSS JOIN LATERAL (
         SELECT count(*)::int AS active, array_agg(array_to_string(p.roles, ',')) AS ancestor_roles, min(p.expire_time) AS ancestors_expire
         FROM api_keys p
         WHERE p.tenant_id = k.tenant_id AND p.api_key_id = ANY(k.ancestor_key_ids)
           AND p.revoke_time IS NULL AND (p.expire_time IS NULL OR p.expire_time > now())
       ) a
       WHERE k.tenant_id = $1 AND k.api_key_id = $2 AND k.revoke_time IS NULL AND (k.expire_time IS NULL OR k.expire_time > now())`,
      [tenantId, apiKeyId],
    );
    const row = rows[0];
    if (!row || row.active !== row.depth) return undefined;
    let roles = row.roles;
    for (const held of row.ancestor_roles ?? []) roles = cappedRoles(roles, held.split(",").filter(Boolean));
    const times = [row.expire_time, row.ancestors_expire].filter((d): d is Date => d !== null);
    const expireTime = times.length > 0 ? new Date(Math.min(...times.map((d) => d.getTime()))) : null;
    return { chain: { creator: row.root_creator, roles }, expireTime };
  }

  // Whether a key and every key above it is still active, for whom it acts, and as what.
  const active = createActiveCheck({
    cache,
    mac,
    kind: "apikey-chain",
    maxCacheMs: deps.cacheSeconds * 1000,
    async load(tenantId, apiKeyId) {
      const loaded = await loadChain(tenantId, apiKeyId);
      return { value: loaded && JSON.stringify(loaded.chain), cacheMs: loaded ? redisTtlMs(loaded.expireTime) : 0 };
    },
  });

  async function forget(rows: Pick<ApiKeyRow, "tenant_id" | "api_key_id" | "secret_hash">[]) {
    for (const r of rows) memo.delete(cacheKeyOf(r.secret_hash));
    await cache.invalidate(...rows.map((r) => cacheKeyOf(r.secret_hash)));
    await Promise.all(rows.map((r) => active.forget(r.tenant_id, r.api_key_id)));
  }

  async function get(tenantId: string, name: string): Promise<ApiKeyRow> {
    const { rows } = await db.query<ApiKeyRow>("SELECT * FROM api_keys WHERE tenant_id = $1 AND api_key_id = $2", [tenantId, apiKeyIdOf(name)]);
    if (!rows[0]) throw new ApiKeyNotFoundError(name);
    return rows[0];
  }

  async function readCached(key: string): Promise<ApiKeyIdentity | undefined> {
    try {
      const stored = await cache.redis.get(key);
      const cached = stored ? await mac.open(key, stored) : undefined;
      if (!cached) return undefined;
      const parsed = JSON.parse(cached) as Omit<ApiKeyIdentity, "expireTime"> & { expireTime: string | null };
      return { ...parsed, expireTime: parsed.expireTime ? new Date(parsed.expireTime) : null };
    } catch (error) {
      deps.log.debug({ err: (error as Error).message }, "API key cache read failed; reading Postgres");
      return undefined;
    }
  }

  /** Reads an active key from Postgres (recording its use, at most once a minute) and caches it in Redis. */
  async function loadIdentity(hash: Buffer): Promise<ApiKeyIdentity | undefined> {
    const { rows } = await db.query<ApiKeyRow>(
      `UPDATE api_keys SET last_used_time = CASE
         WHEN last_used_time IS NULL OR last_used_time < now() - interval '1 minute' THEN date_trunc('milliseconds', now())
         ELSE last_used_time END
       WHERE secret_hash = $1 AND revoke_time IS NULL AND (expire_time IS NULL OR expire_time > now())
       RETURNING *`,
      [hash],
    );
    const row = rows[0];
    if (!row) return undefined;
    const identity = { subject: apiKeyName(row.api_key_id), tenantId: row.tenant_id, roles: row.roles, expireTime: row.expire_time };
    const ttlMs = redisTtlMs(row.expire_time);
    if (ttlMs >= 100) {
      const key = cacheKeyOf(hash);
      cache.redis.set(key, await mac.seal(key, JSON.stringify(identity), ttlMs), "PX", ttlMs).catch(() => {});
    }
    return identity;
  }

  // Half a second in the process saves a Redis round trip on most calls of a busy client.
  const memo = new Map<string, { identity: ApiKeyIdentity; until: number }>();
  const memoMs = 500;

  return {
    get,

    /** Creates a key; the secret is returned only here, and not again for a repeated request_id. */
    async create(tenantId: string, creator: string, fields: { displayName: string; roles: RoleName[]; expireTime: Date | null }, requestId: string) {
      if (requestId) {
        const { rows } = await db.query<ApiKeyRow>("SELECT * FROM api_keys WHERE tenant_id = $1 AND create_request_id = $2", [tenantId, requestId]);
        if (rows[0]) return { row: rows[0], secret: "" };
      }
      // A key made by a key joins its chain: same root, the parent's ancestors and the parent.
      let chain = { parent: null as string | null, root: creator, ancestors: [] as string[] };
      if (creator.startsWith("apiKeys/")) {
        const parent = await get(tenantId, creator);
        chain = { parent: parent.api_key_id, root: parent.root_creator, ancestors: [...parent.ancestor_key_ids, parent.api_key_id] };
      }
      const prefix = `jmk_${randomBase62(8).toLowerCase()}`;
      const secret = `${prefix}_${randomBase62(43)}`;
      const { rows } = await db.query<ApiKeyRow>(
        `INSERT INTO api_keys (tenant_id, api_key_id, prefix, secret_hash, display_name, roles, creator, create_request_id, expire_time, parent_key_id, root_creator, ancestor_key_ids)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (tenant_id, create_request_id) WHERE create_request_id IS NOT NULL DO NOTHING
         RETURNING *`,
        [tenantId, newId(), prefix, hashOf(secret), fields.displayName, fields.roles, creator, requestId || null, fields.expireTime, chain.parent, chain.root, chain.ancestors],
      );
      if (rows[0]) return { row: rows[0], secret };
      const again = await db.query<ApiKeyRow>("SELECT * FROM api_keys WHERE tenant_id = $1 AND create_request_id = $2", [tenantId, requestId]);
      return { row: again.rows[0], secret: "" };
    },

    async list(tenantId: string, req: { pageSize: number; pageToken: string; filter: string; orderBy: string }) {
      const terms = parseFilter(req.filter, ["state", "creator", "role"]);
      const orderBy = parseOrderBy(req.orderBy, Object.keys(sortColumns), { field: "create_time", descending: true });
      const query = JSON.stringify(["apiKeys", req.filter, req.orderBy]);
      const after = req.pageToken ? deps.pageTokens.decode<KeysetPosition>(req.pageToken, query) : undefined;
      const limit = pageSizeOf(req.pageSize);
      const params: unknown[] = [tenantId];
      const param = (v: unknown) => `$${params.push(v)}`;
      const where = ["tenant_id = $1"];
      for (const term of terms) {
        const negate = term.op === "!=" ? "NOT " : "";
        const value = term.value.toUpperCase().replace(/^API_KEY_STATE_|^ROLE_/, "");
        if (term.field === "creator") where.push(`${negate}(creator = ${param(term.value)})`);
        else if (term.field === "role") where.push(`${negate}(${param(value.toLowerCase())} = ANY(roles))`);
        else if (value === "REVOKED") where.push(`${negate}(revoke_time IS NOT NULL)`);
        else if (value === "EXPIRED") where.push(`${negate}(revoke_time IS NULL AND expire_time <= now())`);
        else where.push(`${negate}(revoke_time IS NULL AND (expire_time IS NULL OR expire_time > now()))`);
      }
      const sort = sortColumns[orderBy.field];
      const keyset = keysetSql({ sort, sortType: orderBy.field === "display_name" ? "text" : "timestamptz", id: "api_key_id", descending: orderBy.descending, after, param });
      if (keyset.resume) where.push(keyset.resume);
      const { rows } = await db.query<ApiKeyRow & { sort_key: string }>(
        `SELECT *, (${sort})::text AS sort_key FROM api_keys WHERE ${where.join(" AND ")} ${keyset.orderBy} LIMIT ${param(limit + 1)}`,
        params,
      );
      const { page, nextPageToken } = splitPage(rows, limit, (last) => [last.sort_key, last.api_key_id], deps.pageTokens, query);
      return { apiKeys: page.map(toApiKey), nextPageToken };
    },

    /**
     * Revokes a key and every key made below it now, in Postgres and in the cache (before this
     * returns); revoking a revoked key changes nothing.
     */
    async revoke(tenantId: string, name: string): Promise<ApiKeyRow> {
      const id = apiKeyIdOf(name);
      await db.query(
        "UPDATE api_keys SET revoke_time = date_trunc('milliseconds', now()) WHERE tenant_id = $1 AND (api_key_id = $2 OR $2 = ANY(ancestor_key_ids)) AND revoke_time IS NULL",
        [tenantId, id],
      );
      const row = await get(tenantId, name);
      // Every key below it is forgotten, revoked just now or earlier, so no cache still says "active".
      const { rows: below } = await db.query<ApiKeyRow>("SELECT * FROM api_keys WHERE tenant_id = $1 AND $2 = ANY(ancestor_key_ids)", [tenantId, id]);
      await forget([row, ...below]);
      return row;
    },

    /** Revokes every key of the chains a user started (the user was deleted). */
    async revokeByRoot(tenantId: string, root: string): Promise<void> {
      const { rows } = await db.query<ApiKeyRow>(
        "UPDATE api_keys SET revoke_time = date_trunc('milliseconds', now()) WHERE tenant_id = $1 AND (root_creator = $2 OR creator = $2) AND revoke_time IS NULL RETURNING *",
        [tenantId, root],
      );
      await forget(rows);
    },

    /**
     * For whom and as what the key `name` ("apiKeys/{id}") acts while it and every key above it
     * is active, else undefined: asked on every call made with a key or a token exchanged from
     * one, so revoking (or the expiry of) any key of the chain stops both within a second.
     */
    async chainOf(tenantId: string, name: string): Promise<ApiKeyChain | undefined> {
      const value = await active.current(tenantId, apiKeyIdOf(name));
      return value === undefined ? undefined : (JSON.parse(value) as ApiKeyChain);
    },

    /**
     * The identity of a key as Postgres has it now, past every cache: the key, every key above
     * it and the user at the root active, its roles capped at theirs. What an exchange mints a
     * token from, so a key revoked a moment ago never gets one.
     */
    async verifyNow(secret: string): Promise<ApiKeyIdentity> {
      if (!apiKeyPattern.test(secret)) throw new InvalidTokenError("API key");
      const identity = await loadIdentity(hashOf(secret));
      if (!identity) throw new InvalidTokenError("API key");
      const loaded = await loadChain(identity.tenantId, apiKeyIdOf(identity.subject));
      if (!loaded) throw new InvalidTokenError("API key");
      let roles = cappedRoles(identity.roles, loaded.chain.roles);
      const rootUser = rootUserOf(loaded.chain);
      if (rootUser) {
        const standing = await loadUserStanding(db, identity.tenantId, rootUser.slice("users/".length));
        if (!standing) throw new InvalidTokenError("API key");
        roles = cappedRoles(roles, standing.roles);
      }
      return { ...identity, roles, expireTime: loaded.expireTime };
    },

    /** The identity of an active key; an unknown, revoked or expired key is InvalidTokenError. */
    async verify(secret: string): Promise<ApiKeyIdentity> {
      if (!apiKeyPattern.test(secret)) throw new InvalidTokenError("API key");
      const hash = hashOf(secret);
      const key = cacheKeyOf(hash);
      const memoized = memo.get(key);
      let identity = memoized && memoized.until > Date.now() ? memoized.identity : undefined;
      if (!identity) {
        identity = (await readCached(key)) ?? (await loadIdentity(hash));
        if (!identity) throw new InvalidTokenError("API key");
        if (memo.size >= 10_000) memo.clear();
        memo.set(key, { identity, until: Date.now() + memoMs });
      }
      if (identity.expireTime && identity.expireTime.getTime() <= Date.now()) throw new InvalidTokenError("API key");
      return identity;
    },
  };
}

export type ApiKeys = ReturnType<typeof createApiKeys>;

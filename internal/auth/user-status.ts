/**
 * Whether a user may still act, with which roles, and which session epoch its access tokens must
 * carry. Access tokens are stateless and live up to JOBMESH_ACCESS_TOKEN_TTL_SECONDS; without
 * this check a disabled user kept working, a demoted one kept the old role, and a reset password
 * left the old sessions' tokens working, until the token expired. Disable, delete, a change of
 * roles and a password change or reset `forget` the user, so every service sees it within about
 * half a second (active-check.ts).
 */
import type { Cache } from "../cache/index.ts";
import type { Queryable } from "../db/index.ts";
import { createActiveCheck } from "./active-check.ts";
import { cacheMacOf } from "./cache-mac.ts";

/** What a user may do now. */
export interface UserStanding {
  roles: string[];
  /** Access tokens issued in an earlier epoch (before a password change or reset) are refused. */
  sessionEpoch: number;
}

export interface UserStatus {
  /** The standing of the user a token names (`users/{id}`); undefined when it was deleted or disabled. */
  current(tenantId: string, subject: string): Promise<UserStanding | undefined>;
  /** Forgets what is known of a user, after it was disabled, deleted, given other roles or a new password. */
  forget(tenantId: string, userId: string): Promise<void>;
}

/** Reads a user's standing from Postgres, past every cache. */
export async function loadUserStanding(db: Queryable, tenantId: string, userId: string): Promise<UserStanding | undefined> {
  const { rows } = await db.query<{ roles: string[]; session_epoch: number }>(
    "SELECT roles, session_epoch FROM users WHERE tenant_id = $1 AND user_id = $2 AND NOT disabled",
    [tenantId, userId],
  );
  return rows[0] && { roles: rows[0].roles, sessionEpoch: rows[0].session_epoch };
}

export function createUserStatus(deps: { db: Queryable; cache: Cache; cacheSeconds: number }): UserStatus {
  const check = createActiveCheck({
    cache: deps.cache,
    mac: cacheMacOf(deps.db),
    kind: "user-status",
    maxCacheMs: deps.cacheSeconds * 1000,
    async load(tenantId, userId) {
      const standing = await loadUserStanding(deps.db, tenantId, userId);
      return { value: standing && JSON.stringify(standing), cacheMs: deps.cacheSeconds * 1000 };
    },
  });
  const current = async (tenantId: string, subject: string): Promise<UserStanding | undefined> => {
    const value = await check.current(tenantId, subject.replace(/^users\//, ""));
    return value === undefined ? undefined : (JSON.parse(value) as UserStanding);
  };
  return {
    current,
    forget: (tenantId, userId) => check.forget(tenantId, userId),
  };
}

/**
 * Whether a user may still act, and with which roles. Access tokens are stateless and live up to
 * JOBMESH_ACCESS_TOKEN_TTL_SECONDS; without this check a disabled user kept working, and a
 * demoted one kept the old role, until the token expired. Disable, delete and a change of roles
 * `forget` the user, so every service sees it within about half a second (active-check.ts).
 */
import type { Cache } from "../cache/index.ts";
import type { Queryable } from "../db/index.ts";
import { createActiveCheck } from "./active-check.ts";

export interface UserStatus {
  /**
   * The roles the user a token names (`users/{id}`) holds now; undefined when it was deleted or
   * disabled.
   */
  currentRoles(tenantId: string, subject: string): Promise<string[] | undefined>;
  /** Forgets what is known of a user, after it was disabled, deleted or given other roles. */
  forget(tenantId: string, userId: string): Promise<void>;
}

export function createUserStatus(deps: { db: Queryable; cache: Cache; cacheSeconds: number }): UserStatus {
  const check = createActiveCheck({
    cache: deps.cache,
    kind: "user-roles",
    async load(tenantId, userId) {
      const { rows } = await deps.db.query<{ roles: string[] }>("SELECT roles FROM users WHERE tenant_id = $1 AND user_id = $2 AND NOT disabled", [tenantId, userId]);
      // "roles:" keeps the value non-empty for a user that holds no role.
      return { value: rows[0] && `roles:${rows[0].roles.join(",")}`, cacheMs: deps.cacheSeconds * 1000 };
    },
  });
  return {
    async currentRoles(tenantId, subject) {
      const value = await check.current(tenantId, subject.replace(/^users\//, ""));
      return value === undefined ? undefined : value.slice("roles:".length).split(",").filter(Boolean);
    },
    forget: (tenantId, userId) => check.forget(tenantId, userId),
  };
}

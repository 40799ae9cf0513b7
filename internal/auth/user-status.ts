/**
 * Whether a user may still act: not disabled, not deleted. Access tokens are stateless and live
 * up to JOBMESH_ACCESS_TOKEN_TTL_SECONDS; without this check a disabled user kept working until
 * the token expired. Disable and delete `forget` the user, so every service refuses its tokens
 * within about half a second (active-check.ts).
 */
import type { Cache } from "../cache/index.ts";
import type { Queryable } from "../db/index.ts";
import { createActiveCheck } from "./active-check.ts";

export interface UserStatus {
  /** Whether the user a token names (`users/{id}`) exists and is not disabled. */
  isActive(tenantId: string, subject: string): Promise<boolean>;
  /** Forgets what is known of a user, after it was disabled or deleted. */
  forget(tenantId: string, userId: string): Promise<void>;
}

export function createUserStatus(deps: { db: Queryable; cache: Cache; cacheSeconds: number }): UserStatus {
  const check = createActiveCheck({
    cache: deps.cache,
    kind: "user-active",
    async load(tenantId, userId) {
      const { rows } = await deps.db.query("SELECT 1 FROM users WHERE tenant_id = $1 AND user_id = $2 AND NOT disabled", [tenantId, userId]);
      return { active: rows.length > 0, cacheMs: deps.cacheSeconds * 1000 };
    },
  });
  return {
    isActive: (tenantId, subject) => check.isActive(tenantId, subject.replace(/^users\//, "")),
    forget: (tenantId, userId) => check.forget(tenantId, userId),
  };
}

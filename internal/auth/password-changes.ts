/**
 * Changing a password: by the user (with the current one) or by an admin (a reset). Either one
 * ends the user's sessions: the session epoch is bumped in the same UPDATE as the hash, so
 * refresh tokens of the old epoch are refused by RefreshToken, and access tokens of it by every
 * service within about a second (user-status.ts, rpc/identity.ts). A change by the user then
 * starts a new session for the caller, so they stay signed in where they changed it.
 */
import type { Pool } from "../db/index.ts";
import { UserNotFoundError, WrongCurrentPasswordError } from "./errors.ts";
import type { LoginLimits } from "./login-limits.ts";
import { hashPassword, type PasswordChecker } from "./passwords.ts";
import type { Sessions, SessionTokens } from "./sessions.ts";
import type { UserStatus } from "./user-status.ts";
import { selectUser, type UserRow } from "./users.ts";

export interface PasswordChangesDeps {
  db: Pool;
  passwords: PasswordChecker;
  sessions: Sessions;
  userStatus: UserStatus;
  /** A wrong current password is a failed login: counted in the same budgets, before Argon2. */
  limits: LoginLimits;
}

export function createPasswordChanges(deps: PasswordChangesDeps) {
  const { db } = deps;

  /** Sets the hash, bumps the epoch, revokes the refresh tokens and tells every service. */
  async function setPassword(tenantId: string, userId: string, password: string): Promise<UserRow> {
    const passwordHash = await hashPassword(password);
    const { rows } = await db.query<UserRow>(
      `UPDATE users SET password_hash = $3, session_epoch = session_epoch + 1, revision = revision + 1,
              update_time = date_trunc('milliseconds', now())
       WHERE tenant_id = $1 AND user_id = $2 RETURNING *`,
      [tenantId, userId, passwordHash],
    );
    if (!rows[0]) throw new UserNotFoundError(`users/${userId}`);
    await deps.sessions.revokeAll(tenantId, userId);
    await deps.userStatus.forget(tenantId, userId);
    return rows[0];
  }

  return {
    /**
     * The user changes its own password; the answer is its new session. Guessing the current
     * password here costs what guessing it at Login costs: a stolen access token must not be a
     * way around the login limits to a password that ends every other session.
     */
    async change(tenantId: string, userId: string, currentPassword: string, newPassword: string, clientAddress: string | undefined): Promise<SessionTokens> {
      const user = await selectUser(db, tenantId, userId);
      if (!user) throw new UserNotFoundError(`users/${userId}`);
      const reservation = await deps.limits.reserve(tenantId, user.email, clientAddress);
      if (!(await deps.passwords.check(user.password_hash, currentPassword))) throw new WrongCurrentPasswordError();
      await reservation.release();
      return deps.sessions.start(await setPassword(tenantId, userId, newPassword));
    },

    /** An admin sets another user's password; every session of that user ends. */
    async reset(tenantId: string, name: string, newPassword: string): Promise<UserRow> {
      return setPassword(tenantId, name.replace(/^users\//, ""), newPassword);
    },
  };
}

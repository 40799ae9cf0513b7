/**
 * Sessions: a login issues an access token and an opaque refresh token. Refresh tokens are
 * stored as SHA-256 only, single-use and rotated on every refresh; each belongs to the family
 * of its login. Presenting a spent token means it was copied, so the whole family is revoked
 * (OAuth 2.0 Security BCP, refresh token rotation). A session ends `sessionMaxAgeSeconds` after
 * its login however often it is refreshed, and with a password change or reset (the user's
 * session epoch moves past the one its refresh tokens carry).
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { inTransaction, type Pool, type Queryable } from "../db/index.ts";
import { InvalidTokenError } from "./errors.ts";
import type { TokenIssuer } from "./tokens.ts";
import { userName, type UserRow } from "./users.ts";

export interface SessionTokens {
  accessToken: string;
  expireTime: Date;
  refreshToken: string;
  refreshTokenExpireTime: Date;
}

const hashOf = (token: string) => createHash("sha256").update(token).digest();

export interface SessionsDeps {
  db: Pool;
  issuer: TokenIssuer;
  refreshTokenTtlSeconds: number;
  /** How long a session lasts from its login, refreshes included. */
  sessionMaxAgeSeconds: number;
  /** Told when a spent refresh token comes back (possible theft); the family is already revoked. */
  onReuse(user: { tenantId: string; userId: string; familyId: string }): void;
}

export function createSessions(deps: SessionsDeps) {
  const { db } = deps;

  /** A refresh token of the session started at `sessionStart`; it never outlives the session. */
  async function insertRefreshToken(tx: Queryable, user: Pick<UserRow, "tenant_id" | "user_id" | "session_epoch">, familyId: string, sessionStart: Date) {
    const token = `jmr_${randomBytes(32).toString("base64url")}`;
    const expireTime = new Date(Math.min(Date.now() + deps.refreshTokenTtlSeconds * 1000, sessionStart.getTime() + deps.sessionMaxAgeSeconds * 1000));
    await tx.query(
      "INSERT INTO refresh_tokens (token_hash, family_id, tenant_id, user_id, expire_time, session_epoch, session_start_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
      [hashOf(token), familyId, user.tenant_id, user.user_id, expireTime, user.session_epoch, sessionStart],
    );
    return { token, expireTime };
  }

  async function tokensFor(user: UserRow, refresh: { token: string; expireTime: Date }): Promise<SessionTokens> {
    const access = await deps.issuer.issue({ subject: userName(user.user_id), tenantId: user.tenant_id, roles: user.roles, sessionEpoch: user.session_epoch });
    return { accessToken: access.token, expireTime: access.expireTime, refreshToken: refresh.token, refreshTokenExpireTime: refresh.expireTime };
  }

  const revokeFamily = (tx: Queryable, familyId: string) =>
    tx.query("UPDATE refresh_tokens SET revoke_time = now() WHERE family_id = $1 AND revoke_time IS NULL", [familyId]);

  return {
    /** A new session for a user who just proved who they are. */
    async start(user: UserRow): Promise<SessionTokens> {
      const refresh = await insertRefreshToken(db, user, randomUUID(), new Date());
      return tokensFor(user, refresh);
    },

    /** Spends a refresh token for new tokens; a spent, revoked, expired or foreign one is refused. */
    async refresh(refreshToken: string): Promise<SessionTokens> {
      type Outcome = { ok: true; user: UserRow; refresh: { token: string; expireTime: Date } } | { ok: false; reused?: { tenantId: string; userId: string; familyId: string } };
      const outcome = await inTransaction(db, async (tx): Promise<Outcome> => {
        const { rows } = await tx.query<{ family_id: string; tenant_id: string; user_id: string; expired: boolean; spent_time: Date | null; revoke_time: Date | null; session_epoch: number; session_start_time: Date }>(
          `SELECT family_id, tenant_id, user_id, spent_time, revoke_time, session_epoch, session_start_time,
                  expire_time <= now() OR session_start_time + make_interval(secs => $2) <= now() AS expired
           FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE`,
          [hashOf(refreshToken), deps.sessionMaxAgeSeconds],
        );
        const row = rows[0];
        if (!row || row.revoke_time) return { ok: false };
        if (row.spent_time) {
          await revokeFamily(tx, row.family_id);
          return { ok: false, reused: { tenantId: row.tenant_id, userId: row.user_id, familyId: row.family_id } };
        }
        if (row.expired) return { ok: false };
        const users = await tx.query<UserRow>("SELECT * FROM users WHERE tenant_id = $1 AND user_id = $2", [row.tenant_id, row.user_id]);
        const user = users.rows[0];
        if (!user || user.disabled || user.session_epoch !== row.session_epoch) {
          await revokeFamily(tx, row.family_id);
          return { ok: false };
        }
        await tx.query("UPDATE refresh_tokens SET spent_time = now() WHERE token_hash = $1", [hashOf(refreshToken)]);
        return { ok: true, user, refresh: await insertRefreshToken(tx, user, row.family_id, row.session_start_time) };
      });
      if (!outcome.ok) {
        if (outcome.reused) deps.onReuse(outcome.reused);
        throw new InvalidTokenError("refresh token");
      }
      return tokensFor(outcome.user, outcome.refresh);
    },

    /** Revokes the session of one refresh token of this user; a token of anyone else is refused. */
    async logout(tenantId: string, userId: string, refreshToken: string): Promise<void> {
      const { rows } = await db.query<{ family_id: string }>(
        "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND tenant_id = $2 AND user_id = $3",
        [hashOf(refreshToken), tenantId, userId],
      );
      if (!rows[0]) throw new InvalidTokenError("refresh token");
      await revokeFamily(db, rows[0].family_id);
    },

    /** Revokes every session of a user (logout everywhere, or the user was disabled). */
    async revokeAll(tenantId: string, userId: string): Promise<void> {
      await db.query("UPDATE refresh_tokens SET revoke_time = now() WHERE tenant_id = $1 AND user_id = $2 AND revoke_time IS NULL", [tenantId, userId]);
    },
  };
}

export type Sessions = ReturnType<typeof createSessions>;

/**
 * Users of a tenant: email + Argon2id password + roles. Every query takes the tenant; a user of
 * another tenant is simply not found.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createHash, randomBytes } from "node:crypto";
import { type User, UserSchema } from "../../gen/jobmesh/v1/auth_pb.js";
import { inTransaction, type Pool, type Queryable } from "../db/index.ts";
import { keysetSql, pageSizeOf, parseFilter, parseOrderBy, splitPage, type KeysetPosition, type PageTokens } from "../paging/index.ts";
import { InvalidArgumentError } from "../errors/index.ts";
import { StaleUserEtagError, UserExistsError, UserNotFoundError } from "./errors.ts";
import { hashPassword } from "./passwords.ts";
import { roleEnum, type RoleName } from "../contract/roles.ts";

export interface UserRow {
  tenant_id: string;
  user_id: string;
  email: string;
  display_name: string;
  roles: string[];
  disabled: boolean;
  password_hash: string;
  revision: number;
  /** Bumped by a password change or reset; tokens and refresh tokens of an earlier epoch are refused. */
  session_epoch: number;
  create_time: Date;
  update_time: Date;
  last_login_time: Date | null;
}

export const userName = (userId: string) => `users/${userId}`;
const userIdOf = (name: string) => name.replace(/^users\//, "");
export const newId = () => randomBytes(8).toString("hex");

export function userEtag(row: Pick<UserRow, "user_id" | "revision">): string {
  return createHash("sha256").update(`${row.user_id}\0${row.revision}`).digest("base64url").slice(0, 16);
}

export function toUser(row: UserRow): User {
  return create(UserSchema, {
    name: userName(row.user_id),
    email: row.email,
    displayName: row.display_name,
    roles: row.roles.map(roleEnum),
    disabled: row.disabled,
    tenant: row.tenant_id,
    createTime: timestampFromDate(row.create_time),
    updateTime: timestampFromDate(row.update_time),
    lastLoginTime: row.last_login_time ? timestampFromDate(row.last_login_time) : undefined,
    etag: userEtag(row),
  });
}

export async function selectUser(db: Queryable, tenantId: string, userId: string, forUpdate = false): Promise<UserRow | undefined> {
  const { rows } = await db.query<UserRow>(`SELECT * FROM users WHERE tenant_id = $1 AND user_id = $2 ${forUpdate ? "FOR UPDATE" : ""}`, [tenantId, userId]);
  return rows[0];
}

/** Users with this email (any tenant, or the tenant named by id or slug). */
export async function selectUsersByEmail(db: Queryable, email: string, tenant: string): Promise<UserRow[]> {
  const { rows } = await db.query<UserRow>(
    `SELECT u.* FROM users u JOIN tenants t ON t.id = u.tenant_id
     WHERE lower(u.email) = lower($1) AND ($2 = '' OR t.slug = $2 OR t.id::text = $2)
     LIMIT 2`,
    [email, tenant],
  );
  return rows;
}

export interface UserFields {
  email: string;
  displayName: string;
  roles: RoleName[];
  disabled: boolean;
}

export const updatableUserFields = ["display_name", "roles", "disabled"] as const;
export type UpdatableUserField = (typeof updatableUserFields)[number];

const sortColumns: Record<string, string> = { email: "lower(email)", create_time: "create_time", last_login_time: "COALESCE(last_login_time, 'epoch')" };

export function createUsers(deps: { db: Pool; pageTokens: PageTokens }) {
  const { db } = deps;
  const get = async (tenantId: string, name: string): Promise<UserRow> => {
    const row = await selectUser(db, tenantId, userIdOf(name));
    if (!row) throw new UserNotFoundError(name);
    return row;
  };

  return {
    get,

    async create(tenantId: string, fields: UserFields, password: string, requestId: string): Promise<UserRow> {
      if (requestId) {
        const { rows } = await db.query<UserRow>("SELECT * FROM users WHERE tenant_id = $1 AND create_request_id = $2", [tenantId, requestId]);
        if (rows[0]) return rows[0];
      }
      const passwordHash = await hashPassword(password);
      const { rows } = await db.query<UserRow>(
        `INSERT INTO users (tenant_id, user_id, email, display_name, roles, disabled, password_hash, create_request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT DO NOTHING RETURNING *`,
        [tenantId, newId(), fields.email, fields.displayName, fields.roles, fields.disabled, passwordHash, requestId || null],
      );
      if (rows[0]) return rows[0];
      if (requestId) {
        const again = await db.query<UserRow>("SELECT * FROM users WHERE tenant_id = $1 AND create_request_id = $2", [tenantId, requestId]);
        if (again.rows[0]) return again.rows[0];
      }
      throw new UserExistsError(fields.email);
    },

    async list(tenantId: string, req: { pageSize: number; pageToken: string; filter: string; orderBy: string }) {
      const terms = parseFilter(req.filter, ["email", "role", "disabled"]);
      const orderBy = parseOrderBy(req.orderBy, Object.keys(sortColumns), { field: "email", descending: false });
      const query = JSON.stringify(["users", req.filter, req.orderBy]);
      const after = req.pageToken ? deps.pageTokens.decode<KeysetPosition>(req.pageToken, query) : undefined;
      const limit = pageSizeOf(req.pageSize);
      const params: unknown[] = [tenantId];
      const param = (v: unknown) => `$${params.push(v)}`;
      const where = ["tenant_id = $1"];
      for (const term of terms) {
        const negate = term.op === "!=" ? "NOT " : "";
        if (term.field === "email" && term.op === ":" && term.value.endsWith("*")) where.push(`starts_with(lower(email), lower(${param(term.value.slice(0, -1))}))`);
        else if (term.field === "email") where.push(`${negate}(lower(email) = lower(${param(term.value)}))`);
        else if (term.field === "role") where.push(`${negate}(${param(term.value.toLowerCase())} = ANY(roles))`);
        else where.push(`${negate}(disabled = ${param(term.value === "true")})`);
      }
      const sort = sortColumns[orderBy.field];
      const keyset = keysetSql({ sort, sortType: orderBy.field === "email" ? "text" : "timestamptz", id: "user_id", descending: orderBy.descending, after, param });
      if (keyset.resume) where.push(keyset.resume);
      const { rows } = await db.query<UserRow & { sort_key: string }>(
        `SELECT *, (${sort})::text AS sort_key FROM users WHERE ${where.join(" AND ")} ${keyset.orderBy} LIMIT ${param(limit + 1)}`,
        params,
      );
      const { page, nextPageToken } = splitPage(rows, limit, (last) => [last.sort_key, last.user_id], deps.pageTokens, query);
      return { users: page.map(toUser), nextPageToken };
    },

    /** Applies the masked fields; returns the new row and whether the user was just disabled. */
    async update(tenantId: string, name: string, etag: string, mask: readonly string[], fields: Omit<UserFields, "email">) {
      for (const path of mask) {
        if (!(updatableUserFields as readonly string[]).includes(path)) {
          throw new InvalidArgumentError(`update_mask path "${path}" cannot be updated; use ${updatableUserFields.join(", ")}`, {
            violations: [{ field: "update_mask", description: `unknown or read-only path "${path}"` }],
          });
        }
      }
      const paths = mask.length > 0 ? mask : updatableUserFields;
      return inTransaction(db, async (tx) => {
        const current = await selectUser(tx, tenantId, userIdOf(name), true);
        if (!current) throw new UserNotFoundError(name);
        if (etag && etag !== userEtag(current)) throw new StaleUserEtagError(name);
        const next = {
          displayName: paths.includes("display_name") ? fields.displayName : current.display_name,
          roles: paths.includes("roles") ? fields.roles : current.roles,
          disabled: paths.includes("disabled") ? fields.disabled : current.disabled,
        };
        const { rows } = await tx.query<UserRow>(
          `UPDATE users SET display_name = $3, roles = $4, disabled = $5, revision = revision + 1,
                  update_time = date_trunc('milliseconds', now())
           WHERE tenant_id = $1 AND user_id = $2 RETURNING *`,
          [tenantId, current.user_id, next.displayName, next.roles, next.disabled],
        );
        const rolesChanged = [...next.roles].sort().join() !== [...current.roles].sort().join();
        return { row: rows[0], disabledNow: next.disabled && !current.disabled, rolesChanged };
      });
    },

    /** Deletes the user; its refresh tokens go with it (ON DELETE CASCADE). */
    async delete(tenantId: string, name: string, etag: string): Promise<void> {
      await inTransaction(db, async (tx) => {
        const current = await selectUser(tx, tenantId, userIdOf(name), true);
        if (!current) throw new UserNotFoundError(name);
        if (etag && etag !== userEtag(current)) throw new StaleUserEtagError(name);
        await tx.query("DELETE FROM users WHERE tenant_id = $1 AND user_id = $2", [tenantId, current.user_id]);
      });
    },

    async recordLogin(tenantId: string, userId: string): Promise<void> {
      await db.query("UPDATE users SET last_login_time = date_trunc('milliseconds', now()) WHERE tenant_id = $1 AND user_id = $2", [tenantId, userId]);
    },
  };
}

export type Users = ReturnType<typeof createUsers>;

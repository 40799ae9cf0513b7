import type { Pool } from "../db/index.ts";
import type { PageTokens } from "../paging/index.ts";
import { UserExistsError } from "./errors.ts";
import { generatePassword } from "./passwords.ts";
import { createUsers } from "./users.ts";

export interface BootstrapAdmin {
  email: string;
  /** Set only when this call generated the password: print it once, it is not stored anywhere readable. */
  generatedPassword?: string;
  /** False when the admin already existed. */
  created: boolean;
}

/**
 * Makes sure the tenant has its first admin: creates `email` with `password` (or a generated
 * one) when the tenant has no user with that email yet. An existing admin is left alone.
 */
export async function ensureAdmin(deps: { db: Pool; pageTokens: PageTokens }, tenantId: string, email: string, password: string): Promise<BootstrapAdmin> {
  const { rows } = await deps.db.query("SELECT 1 FROM users WHERE tenant_id = $1 AND lower(email) = lower($2)", [tenantId, email]);
  if (rows.length > 0) return { email, created: false };
  const chosen = password || generatePassword();
  try {
    await createUsers(deps).create(tenantId, { email, displayName: "Administrator", roles: ["admin"], disabled: false }, chosen, "");
  } catch (error) {
    // Another process bootstrapping at the same moment created it first.
    if (error instanceof UserExistsError) return { email, created: false };
    throw error;
  }
  return { email, created: true, generatedPassword: password ? undefined : chosen };
}

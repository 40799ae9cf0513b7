/**
 * Credentials for tests of a mesh started with `startTestMesh({}, { auth: true })`: users of
 * each role (created once per tenant through AuthService), their access tokens and headers,
 * and more tenants with their own admin.
 */
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { randomBytes } from "node:crypto";
import { AuthService, Role } from "../../gen/jobmesh/v1/auth_pb.js";
import { ensureAdmin } from "../../internal/auth/index.ts";
import type { RoleName } from "../../internal/contract/index.ts";
import { ensureTenant } from "../../internal/db/index.ts";
import type { Infra } from "../../internal/mesh/infra.ts";
import type { RpcServer } from "../../internal/rpc/server.ts";

export const testPassword = "test-password-not-a-secret";

export interface TestUser {
  email: string;
  password: string;
  /** Tenant slug, to log in with. */
  tenant: string;
  tenantId: string;
  /** "users/{id}". */
  name: string;
}

export interface TestAuth {
  server: RpcServer;
  client: Client<typeof AuthService>;
  /** A user of this role (made on first use) in the tenant; default the bootstrap tenant. */
  userFor(role: RoleName, tenant?: string): Promise<TestUser>;
  /** An access token of userFor(role, tenant), cached. */
  tokenFor(role: RoleName, tenant?: string): Promise<string>;
  /** `{ authorization: "Bearer <token>" }` of tokenFor(role, tenant). */
  headersFor(role: RoleName, tenant?: string): Promise<Record<string, string>>;
  /** A fresh user with this role, not cached: for tests that disable, delete or log out. */
  newUser(role: RoleName, tenant?: string): Promise<TestUser>;
  /**
   * A Connect interceptor that sends tokenFor(role, tenant) on every call: give it to a
   * transport (`interceptors: [await mesh.auth.interceptorFor("admin")]`) and its client is signed in.
   */
  interceptorFor(role: RoleName, tenant?: string): Promise<Interceptor>;
}

const roleEnums: Record<RoleName, Role> = { viewer: Role.VIEWER, operator: Role.OPERATOR, admin: Role.ADMIN };

export async function createTestAuth(infra: Infra, server: RpcServer): Promise<TestAuth> {
  const client = createClient(AuthService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
  const bootstrap = infra.config.bootstrapTenant;
  const admins = new Map<string, TestUser>();
  const users = new Map<string, TestUser>();
  const tokens = new Map<string, string>();

  async function adminOf(tenant: string): Promise<TestUser> {
    let admin = admins.get(tenant);
    if (!admin) {
      const tenantId = await ensureTenant(infra.db, tenant);
      const email = `admin@${tenant}.example.com`;
      await ensureAdmin({ db: infra.db, pageTokens: infra.pageTokens }, tenantId, email, testPassword);
      const { rows } = await infra.db.query<{ user_id: string }>("SELECT user_id FROM users WHERE tenant_id = $1 AND email = $2", [tenantId, email]);
      admin = { email, password: testPassword, tenant, tenantId, name: `users/${rows[0].user_id}` };
      admins.set(tenant, admin);
    }
    return admin;
  }

  async function login(user: TestUser): Promise<string> {
    return (await client.login({ email: user.email, password: user.password, tenant: user.tenant })).accessToken;
  }

  async function newUser(role: RoleName, tenant = bootstrap): Promise<TestUser> {
    const admin = await adminOf(tenant);
    const adminToken = tokens.get(`${tenant}:admin`) ?? (await login(admin));
    tokens.set(`${tenant}:admin`, adminToken);
    const email = `${role}-${randomBytes(4).toString("hex")}@example.com`;
    const { user } = await client.createUser(
      { user: { email, roles: [roleEnums[role]] }, password: testPassword },
      { headers: { authorization: `Bearer ${adminToken}` } },
    );
    return { email, password: testPassword, tenant, tenantId: admin.tenantId, name: user!.name };
  }

  async function userFor(role: RoleName, tenant = bootstrap): Promise<TestUser> {
    if (role === "admin") return adminOf(tenant);
    const key = `${tenant}:${role}`;
    let user = users.get(key);
    if (!user) {
      user = await newUser(role, tenant);
      users.set(key, user);
    }
    return user;
  }

  async function tokenFor(role: RoleName, tenant = bootstrap): Promise<string> {
    const key = `${tenant}:${role}`;
    let token = tokens.get(key);
    if (!token) {
      token = await login(await userFor(role, tenant));
      tokens.set(key, token);
    }
    return token;
  }

  return {
    server,
    client,
    userFor,
    tokenFor,
    newUser,
    headersFor: async (role, tenant) => ({ authorization: `Bearer ${await tokenFor(role, tenant)}` }),
    async interceptorFor(role, tenant) {
      const authorization = `Bearer ${await tokenFor(role, tenant)}`;
      return (next) => (req) => {
        req.header.set("authorization", authorization);
        return next(req);
      };
    },
  };
}

/**
 * AuthService handlers: read the caller, call the auth domain, shape the response. Requests
 * were validated by the interceptor; domain errors are mapped there, except a login rate limit,
 * which gets a google.rpc.RetryInfo detail here so clients know how long to wait.
 */
import { create } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { RetryInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import {
  AuthService,
  ChangePasswordResponseSchema,
  CreateApiKeyResponseSchema,
  CreateUserResponseSchema,
  DeleteUserResponseSchema,
  ExchangeApiKeyResponseSchema,
  GetApiKeyResponseSchema,
  GetCurrentIdentityResponseSchema,
  GetJwksResponseSchema,
  GetUserResponseSchema,
  IdentitySchema,
  ListApiKeysResponseSchema,
  ListUsersResponseSchema,
  LoginResponseSchema,
  LogoutResponseSchema,
  PrincipalKind,
  RefreshTokenResponseSchema,
  ResetUserPasswordResponseSchema,
  RevokeApiKeyResponseSchema,
  UpdateUserResponseSchema,
} from "../../gen/jobmesh/v1/auth_pb.js";
import { decodeJwt } from "jose";
import { auditAttributionKey, type AuditAttribution } from "../rpc/audit.ts";
import { clientAddressKey } from "../rpc/client-address.ts";
import { callerOf } from "../rpc/context.ts";
import { credentialKey } from "../rpc/identity.ts";
import { toApiKey } from "./api-keys.ts";
import { apiKeyHintOf } from "./credentials.ts";
import { NotAUserError, RolesExceedCreatorError, TooManyLoginAttemptsError } from "./errors.ts";
import type { AuthDomain } from "./index.ts";
import { permissionsOf, roleEnum, rolesOrViewer, rolesWithin } from "../contract/roles.ts";
import type { SessionTokens } from "./sessions.ts";
import { toUser } from "./users.ts";

export { AuthService };

const sessionResponse = (t: SessionTokens) => ({
  accessToken: t.accessToken,
  tokenType: "Bearer",
  expireTime: timestampFromDate(t.expireTime),
  refreshToken: t.refreshToken,
  refreshTokenExpireTime: timestampFromDate(t.refreshTokenExpireTime),
});

const userIdOfSubject = (subject: string) => (subject.startsWith("users/") ? subject.slice("users/".length) : undefined);

/**
 * Public methods have no caller for the audit log to name, so their handlers say who the call
 * was for: set before the domain call decides (a refused login still lands in its tenant's log,
 * with the email it tried), completed from the token it issued when it succeeds.
 */
function attribute(values: { set<T>(key: { id: symbol; defaultValue: T }, value: T): unknown }, attribution: AuditAttribution): AuditAttribution {
  values.set(auditAttributionKey, attribution);
  return attribution;
}

/** The subject and tenant of an access token this service just signed (read, not verified: it is ours). */
function issuedTo(attribution: AuditAttribution, accessToken: string): void {
  const claims = decodeJwt(accessToken);
  if (typeof claims.sub === "string") attribution.subject = claims.sub;
  if (typeof claims.tenant === "string") attribution.tenantId = claims.tenant;
}

/** How a login's tenant is found for the audit log before the login decides (see servers.ts). */
export interface AuthServiceOptions {
  /** The tenant a login for `email` in `tenant` (an id, a slug, or "") counts against, as the login resolves it. */
  loginTenantOf?: (email: string, tenant: string) => Promise<string | undefined>;
}

/** Needs every permission the mesh's protos name, to list the caller's in GetCurrentIdentity. */
export function createAuthService(auth: AuthDomain, knownPermissions: readonly string[], options: AuthServiceOptions = {}): ServiceImpl<typeof AuthService> {
  return {
    async login(req, ctx) {
      // The email, never the password.
      const attribution = attribute(ctx.values, { credentialHint: `email:${req.email}` });
      try {
        const tokens = await auth.login(req.email, req.password, req.tenant, ctx.values.get(clientAddressKey));
        // The tenant and user, from the token the login issued: no lookup of its own.
        issuedTo(attribution, tokens.accessToken);
        return create(LoginResponseSchema, sessionResponse(tokens));
      } catch (error) {
        // A refused login tells nothing about the tenant (its errors must not: they would tell
        // which emails have accounts), so only a refused one is looked up, as the login would
        // resolve it, after the decision: no login waits on the audit log's query before it.
        attribution.tenantId = await options.loginTenantOf?.(req.email, req.tenant);
        if (!(error instanceof TooManyLoginAttemptsError)) throw error;
        const retryDelay = durationFromMs(error.retryAfterSeconds * 1000);
        throw new ConnectError(error.message, Code.ResourceExhausted, undefined, [{ desc: RetryInfoSchema, value: create(RetryInfoSchema, { retryDelay }) }], error);
      }
    },
    async refreshToken(req, ctx) {
      // Whose refresh token it was is known only once it is accepted.
      const attribution = attribute(ctx.values, {});
      const tokens = await auth.sessions.refresh(req.refreshToken);
      issuedTo(attribution, tokens.accessToken);
      return create(RefreshTokenResponseSchema, sessionResponse(tokens));
    },
    async logout(req, ctx) {
      const caller = callerOf(ctx.values);
      const userId = userIdOfSubject(caller.subject);
      if (!userId) throw new NotAUserError("Logout");
      if (req.allSessions) await auth.sessions.revokeAll(caller.tenantId, userId);
      else if (req.refreshToken) await auth.sessions.logout(caller.tenantId, userId, req.refreshToken);
      return create(LogoutResponseSchema);
    },
    async getJwks() {
      const keys = (await auth.jwks()).map((k) => ({ kty: k.kty, crv: k.crv, x: k.x, y: k.y ?? "", kid: k.kid, alg: k.alg, use: k.use }));
      return create(GetJwksResponseSchema, { keys });
    },
    async getCurrentIdentity(_req, ctx) {
      const caller = callerOf(ctx.values);
      const credential = ctx.values.get(credentialKey);
      const userId = userIdOfSubject(caller.subject);
      let email = "";
      let displayName = "";
      if (userId) {
        const user = await auth.users.get(caller.tenantId, caller.subject);
        email = user.email;
        displayName = user.display_name;
      } else if (caller.subject.startsWith("apiKeys/")) {
        displayName = (await auth.apiKeys.get(caller.tenantId, caller.subject)).display_name;
      }
      const identity = create(IdentitySchema, {
        subject: caller.subject,
        kind: userId ? PrincipalKind.USER : caller.subject.startsWith("apiKeys/") ? PrincipalKind.API_KEY : PrincipalKind.SYSTEM,
        tenant: caller.tenantId,
        email,
        displayName,
        roles: caller.roles.map(roleEnum),
        permissions: permissionsOf(caller.roles, knownPermissions),
        expireTime: credential?.expireTime ? timestampFromDate(credential.expireTime) : undefined,
      });
      return create(GetCurrentIdentityResponseSchema, { identity });
    },
    async createUser(req, ctx) {
      const u = req.user!;
      const row = await auth.users.create(
        callerOf(ctx.values).tenantId,
        { email: u.email, displayName: u.displayName, roles: rolesOrViewer(u.roles), disabled: u.disabled },
        req.password,
        req.requestId,
      );
      return create(CreateUserResponseSchema, { user: toUser(row) });
    },
    async getUser(req, ctx) {
      return create(GetUserResponseSchema, { user: toUser(await auth.users.get(callerOf(ctx.values).tenantId, req.name)) });
    },
    async listUsers(req, ctx) {
      return create(ListUsersResponseSchema, await auth.users.list(callerOf(ctx.values).tenantId, req));
    },
    async updateUser(req, ctx) {
      const u = req.user!;
      const row = await auth.updateUser(callerOf(ctx.values).tenantId, u.name, u.etag, req.updateMask?.paths ?? [], {
        displayName: u.displayName,
        roles: rolesOrViewer(u.roles),
        disabled: u.disabled,
      });
      return create(UpdateUserResponseSchema, { user: toUser(row) });
    },
    async deleteUser(req, ctx) {
      await auth.deleteUser(callerOf(ctx.values).tenantId, req.name, req.etag);
      return create(DeleteUserResponseSchema);
    },
    async createApiKey(req, ctx) {
      const caller = callerOf(ctx.values);
      const k = req.apiKey!;
      const roles = rolesOrViewer(k.roles);
      if (!rolesWithin(roles, caller.roles)) throw new RolesExceedCreatorError();
      const { row, secret } = await auth.apiKeys.create(
        caller.tenantId,
        caller.subject,
        { displayName: k.displayName, roles, expireTime: k.expireTime ? timestampDate(k.expireTime) : null },
        req.requestId,
      );
      return create(CreateApiKeyResponseSchema, { apiKey: toApiKey(row), secret });
    },
    async getApiKey(req, ctx) {
      return create(GetApiKeyResponseSchema, { apiKey: toApiKey(await auth.apiKeys.get(callerOf(ctx.values).tenantId, req.name)) });
    },
    async listApiKeys(req, ctx) {
      return create(ListApiKeysResponseSchema, await auth.apiKeys.list(callerOf(ctx.values).tenantId, req));
    },
    async revokeApiKey(req, ctx) {
      return create(RevokeApiKeyResponseSchema, { apiKey: toApiKey(await auth.apiKeys.revoke(callerOf(ctx.values).tenantId, req.name)) });
    },
    async changePassword(req, ctx) {
      const caller = callerOf(ctx.values);
      const userId = userIdOfSubject(caller.subject);
      if (!userId) throw new NotAUserError("ChangePassword");
      const tokens = await auth.passwordChanges.change(caller.tenantId, userId, req.currentPassword, req.newPassword, ctx.values.get(clientAddressKey));
      return create(ChangePasswordResponseSchema, sessionResponse(tokens));
    },
    async resetUserPassword(req, ctx) {
      return create(ResetUserPasswordResponseSchema, { user: toUser(await auth.passwordChanges.reset(callerOf(ctx.values).tenantId, req.name, req.newPassword)) });
    },
    async exchangeApiKey(req, ctx) {
      // The key's public prefix, as ListApiKeys shows it; never the secret part.
      const attribution = attribute(ctx.values, { credentialHint: apiKeyHintOf(req.secret) });
      const token = await auth.exchangeApiKey(req.secret);
      issuedTo(attribution, token.token);
      return create(ExchangeApiKeyResponseSchema, { accessToken: token.token, tokenType: "Bearer", expireTime: timestampFromDate(token.expireTime) });
    },
  };
}

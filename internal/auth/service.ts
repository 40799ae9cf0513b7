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
import { clientAddressKey } from "../rpc/client-address.ts";
import { callerOf } from "../rpc/context.ts";
import { credentialKey } from "../rpc/identity.ts";
import { toApiKey } from "./api-keys.ts";
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

/** Needs every permission the mesh's protos name, to list the caller's in GetCurrentIdentity. */
export function createAuthService(auth: AuthDomain, knownPermissions: readonly string[]): ServiceImpl<typeof AuthService> {
  return {
    async login(req, ctx) {
      try {
        const tokens = await auth.login(req.email, req.password, req.tenant, ctx.values.get(clientAddressKey));
        return create(LoginResponseSchema, sessionResponse(tokens));
      } catch (error) {
        if (!(error instanceof TooManyLoginAttemptsError)) throw error;
        const retryDelay = durationFromMs(error.retryAfterSeconds * 1000);
        throw new ConnectError(error.message, Code.ResourceExhausted, undefined, [{ desc: RetryInfoSchema, value: create(RetryInfoSchema, { retryDelay }) }], error);
      }
    },
    async refreshToken(req) {
      return create(RefreshTokenResponseSchema, sessionResponse(await auth.sessions.refresh(req.refreshToken)));
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
    async exchangeApiKey(req) {
      const token = await auth.exchangeApiKey(req.secret);
      return create(ExchangeApiKeyResponseSchema, { accessToken: token.token, tokenType: "Bearer", expireTime: timestampFromDate(token.expireTime) });
    },
  };
}

/**
 * The identity interceptor every service shares: who is calling (a JWT access token or an API
 * key), for which tenant, and whether the method's `(jobmesh.v1.authz)` rule lets the caller's
 * roles in. No credentials → UNAUTHENTICATED; a role without the permission → PERMISSION_DENIED.
 * Public methods, gRPC health and reflection pass without credentials.
 *
 * Before it decides, it records who the call claimed to be (attemptedCallerKey), step by step as
 * it learns more, so an interceptor outside it (the audit slot) sees a refused caller too.
 */
import type { DescService } from "@bufbuild/protobuf";
import { createClient, createContextKey, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { errors as joseErrors, type JWK } from "jose";
import { AuthService } from "../../gen/jobmesh/v1/auth_pb.js";
import {
  credentialOf,
  MissingPermissionError,
  NoCredentialsError,
  InvalidTokenError,
  jwksOf,
  rootUserOf,
  type ApiKeyChain,
  type ApiKeyIdentity,
  type TokenVerifier,
  type UserStanding,
  type VerifiedToken,
} from "../auth/index.ts";
import { apiKeyHintOf } from "../auth/credentials.ts";
import { cappedRoles, decide, type AccessRule } from "../contract/index.ts";
import { attemptedCallerKey, callerKey, type AttemptedCaller } from "./context.ts";

/** How the caller proved who it is, for GetCurrentIdentity. */
export interface Credential {
  kind: "user" | "api_key";
  /** When the credential stops working (token expiry, key expiry), or null for a key without expiry. */
  expireTime: Date | null;
}

export const credentialKey = createContextKey<Credential | undefined>(undefined, { description: "jobmesh credential" });

/** Services every server exposes that never need credentials. */
const infrastructurePrefixes = ["grpc.health.v1.", "grpc.reflection."];

const anonymous: AttemptedCaller = Object.freeze({ kind: "anonymous" });

export interface IdentityOptions {
  /** accessRulesOf(the services served), keyed "/pkg.Service/Method". */
  rules: Map<string, AccessRule>;
  verifier: TokenVerifier;
  apiKeys: { verify(secret: string): Promise<ApiKeyIdentity>; chainOf(tenantId: string, name: string): Promise<ApiKeyChain | undefined> };
  /** The roles and session epoch of the user a token names now; undefined when disabled or deleted. */
  users: { current(tenantId: string, subject: string): Promise<UserStanding | undefined> };
}

export function createIdentityInterceptors(options: IdentityOptions): Interceptor[] {
  const identity: Interceptor = (next) => async (req) => {
    const record = (attempted: AttemptedCaller) => req.contextValues.set(attemptedCallerKey, attempted);
    record(anonymous);
    const service = req.method.parent.typeName;
    const procedure = `/${service}/${req.method.name}`;
    const rule = options.rules.get(procedure);
    if (!rule) {
      if (infrastructurePrefixes.some((p) => service.startsWith(p))) return next(req);
      // Not reachable through startRpcServer (a method without a rule fails start-up); deny anyway.
      throw new MissingPermissionError(procedure);
    }
    if (rule.kind === "public") return next(req);

    let presented;
    try {
      presented = credentialOf(req.header);
    } catch (error) {
      // An authorization header that is not "Bearer <one value>": it meant to authenticate.
      record({ kind: "token", credentialHint: "malformed" });
      throw error;
    }
    if (!presented) throw new NoCredentialsError();
    const hint = presented.kind === "token" ? "unverified" : apiKeyHintOf(presented.value);
    record({ kind: presented.kind, credentialHint: hint });
    let who;
    try {
      who = presented.kind === "token" ? await options.verifier.verify(presented.value) : await options.apiKeys.verify(presented.value);
    } catch (error) {
      // An expired token whose signature verified is the issuer's word on whose it was: its
      // refusal belongs in that tenant's chain, not the operator's.
      const expired = expiredTokenOf(error);
      if (expired) record({ kind: "token", ...expired });
      throw error;
    }
    const attempted = {
      kind: presented.kind,
      subject: who.subject,
      tenantId: who.tenantId,
      credentialHint: presented.kind === "token" ? `tokens/${(who as VerifiedToken).tokenId}` : hint,
    };
    record(attempted);
    const viaApiKey = who.subject.startsWith("apiKeys/");
    const refused = () => new InvalidTokenError(presented.kind === "token" ? "access token" : "API key");
    // A user's token dies with the user's access: disabled or deleted, it stops working;
    // demoted, it acts with the lower role. Promoted, it keeps its own: new roles come with a
    // new token; a password change or reset ends the tokens issued before it. An API key (and
    // a token exchanged from one) dies with the key or any key above it (a key made by a key),
    // acts with no role above any of them, and acts for the user at the root of the chain in
    // the same way as that user's token.
    let roles = who.roles;
    let user: string | undefined = viaApiKey ? undefined : who.subject;
    if (viaApiKey) {
      const chain = await options.apiKeys.chainOf(who.tenantId, who.subject);
      if (chain === undefined) throw refused();
      roles = cappedRoles(roles, chain.roles);
      user = rootUserOf(chain);
    }
    if (user) {
      const standing = await options.users.current(who.tenantId, user);
      if (standing === undefined) throw refused();
      const tokenEpoch = viaApiKey ? undefined : (who as { sessionEpoch?: number }).sessionEpoch;
      if (tokenEpoch !== undefined && tokenEpoch < standing.sessionEpoch) throw refused();
      roles = cappedRoles(roles, standing.roles);
    }
    record({ ...attempted, roles });
    if (decide(rule, roles) !== "allow") throw new MissingPermissionError(rule.permission);
    req.contextValues.set(callerKey, { tenantId: who.tenantId, subject: who.subject, roles });
    req.contextValues.set(credentialKey, { kind: viaApiKey ? "api_key" : "user", expireTime: who.expireTime });
    return next(req);
  };
  return [identity];
}

/**
 * Subject, tenant and token id of an access token refused only for its age. jose checks the
 * signature before any claim, and the issuer, audience and type before the expiry: a JWTExpired
 * is thrown only for a token our key signed, so its claims are ours. Undefined for any other
 * refusal (a token that did not verify names nobody).
 */
function expiredTokenOf(error: unknown): { subject: string; tenantId: string; credentialHint: string } | undefined {
  const cause = error instanceof InvalidTokenError ? error.cause : undefined;
  if (!(cause instanceof joseErrors.JWTExpired)) return undefined;
  const { sub, tenant, jti } = cause.payload as { sub?: unknown; tenant?: unknown; jti?: unknown };
  if (typeof sub !== "string" || typeof tenant !== "string" || tenant === "" || typeof jti !== "string") return undefined;
  return { subject: sub, tenantId: tenant, credentialHint: `tokens/${jti}` };
}

/** Loads the JWKS from a remote AuthService over Connect (for services in other processes). */
export function createRemoteJwksLoader(authUrl: string): () => Promise<JWK[]> {
  const client = createClient(AuthService, createConnectTransport({ baseUrl: authUrl, httpVersion: "1.1" }));
  return async () => {
    const { keys } = await client.getJwks({}, { timeoutMs: 5_000 });
    return jwksOf(keys);
  };
}

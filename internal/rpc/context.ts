/**
 * Typed values a handler reads from its context. The identity work (issue 5) replaces the
 * bootstrap-tenant interceptor that sets them today.
 */
import { createContextKey } from "@connectrpc/connect";

/** Who is calling, on behalf of which tenant. */
export interface Caller {
  tenantId: string;
  /** Subject: a user id, an API key id, or "bootstrap" while the mesh is unauthenticated. */
  subject: string;
  roles: string[];
}

/** Set by identity only when it lets the call in: its absence after the call means it was refused (or the method is public). */
export const callerKey = createContextKey<Caller | undefined>(undefined, { description: "jobmesh caller" });

/**
 * Who a call claimed to be, as far as identity got before deciding: an audit interceptor reads
 * it after the call, refused or not. Never the secret: `credentialHint` is an API key's public
 * prefix ("jmk_ab12cd34"), a verified token's id ("tokens/<jti>"), or "unverified" / "malformed"
 * when the credential could not be read or verified (then subject and tenant are unknown).
 * `roles` are the caller's effective roles, set once identity has worked them out.
 */
export type AttemptedCaller =
  | { kind: "anonymous" }
  | { kind: "token" | "api_key"; subject?: string; tenantId?: string; roles?: string[]; credentialHint: string };

/** Undefined when no identity interceptor recorded one (the bootstrap mode: read callerKey). */
export const attemptedCallerKey = createContextKey<AttemptedCaller | undefined>(undefined, { description: "jobmesh attempted caller" });

/** A call reached a handler without a caller: a wiring bug, or a public method misused. */
export class NoCallerError extends Error {
  constructor() {
    super("no caller in context");
    this.name = "NoCallerError";
  }
}

/** The caller of this call; every tenant-scoped handler starts here. */
export function callerOf(values: { get<T>(key: { id: symbol; defaultValue: T }): T }): Caller {
  const caller = values.get(callerKey);
  if (!caller) throw new NoCallerError();
  return caller;
}

/** The socket's remote address: the client, or a proxy in front of it. Per-client limits use clientAddressKey (client-address.ts). */
export const peerAddressKey = createContextKey<string | undefined>(undefined, { description: "jobmesh peer address" });

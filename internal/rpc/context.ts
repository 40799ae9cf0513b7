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

export const callerKey = createContextKey<Caller | undefined>(undefined, { description: "jobmesh caller" });

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

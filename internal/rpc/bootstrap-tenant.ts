/**
 * TEMPORARY identity: every caller acts for the bootstrap tenant with no roles checked. This is
 * the one interceptor the identity work (issue 5: JWT/API keys, RBAC from the authz option)
 * replaces; until then the mesh is unauthenticated, as the README says.
 */
import type { Interceptor } from "@connectrpc/connect";
import { callerKey } from "./context.ts";

export function createBootstrapTenantInterceptor(tenantId: string): Interceptor {
  return (next) => (req) => {
    req.contextValues.set(callerKey, { tenantId, subject: "bootstrap", roles: ["admin"] });
    return next(req);
  };
}

/**
 * Reads the `(jobmesh.v1.authz)` option of every method a server exposes. A method without a
 * rule stops the server at start-up: access is denied by default, never granted by omission.
 */
import { getOption, hasOption } from "@bufbuild/protobuf";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { authz } from "../../gen/jobmesh/v1/options_pb.js";

/** What a method requires: a named permission, or nothing at all. */
export type AccessRule = { kind: "public" } | { kind: "permission"; permission: string };

/** A method whose access rule is missing or contradictory. */
export class MissingAuthzRuleError extends Error {
  constructor(method: string, problem: string) {
    super(`${method}: ${problem}; every RPC needs option (jobmesh.v1.authz) = {permission: "..."} or {public: true}`);
    this.name = "MissingAuthzRuleError";
  }
}

export function accessRuleOf(method: DescMethod): AccessRule {
  const name = `${method.parent.typeName}.${method.name}`;
  if (!hasOption(method, authz)) throw new MissingAuthzRuleError(name, "no authz option");
  const rule = getOption(method, authz);
  if (rule.public && rule.permission) throw new MissingAuthzRuleError(name, "authz is both public and a permission");
  if (rule.public) return { kind: "public" };
  if (!/^[a-z]+(\.[a-z_]+)+$/.test(rule.permission)) {
    throw new MissingAuthzRuleError(name, `authz permission "${rule.permission}" is not of the form "resource.action"`);
  }
  return { kind: "permission", permission: rule.permission };
}

/** The access rule of every method of the services, keyed by "/pkg.Service/Method". */
export function accessRulesOf(services: DescService[]): Map<string, AccessRule> {
  const rules = new Map<string, AccessRule>();
  for (const service of services) {
    for (const method of service.methods) {
      rules.set(`/${service.typeName}/${method.name}`, accessRuleOf(method));
    }
  }
  return rules;
}

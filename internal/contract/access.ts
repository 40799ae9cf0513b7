/**
 * The access rule of every method, read from its `(jobmesh.v1.authz)` option, and the decision
 * made with it. A method without a rule stops the process at start-up: access is denied by
 * default, never granted by omission. The services and the gateway both decide here, so a call
 * the gateway lets through is one the service would let through.
 */
import { getOption, hasOption } from "@bufbuild/protobuf";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
// @deno-types="../../gen/jobmesh/v1/options_pb.d.ts"
import { authz } from "../../gen/jobmesh/v1/options_pb.js";
import { grants } from "./roles.ts";

/** What a method requires: a named permission, or nothing at all. */
export type AccessRule = { kind: "public" } | { kind: "permission"; permission: string };

/** A method whose access rule is missing or contradictory. */
export class MissingAuthzRuleError extends Error {
  constructor(method: string, problem: string) {
    super(`${method}: ${problem}; every RPC needs option (jobmesh.v1.authz) = {permission: "..."} or {public: true}`);
    this.name = "MissingAuthzRuleError";
  }
}

/** "/jobmesh.v1.JobService/GetJob": how Connect, gRPC and the access tables name a method. */
export function procedureOf(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
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
export function accessRulesOf(services: readonly DescService[]): Map<string, AccessRule> {
  const rules = new Map<string, AccessRule>();
  for (const service of services) {
    for (const method of service.methods) rules.set(procedureOf(method), accessRuleOf(method));
  }
  return rules;
}

/** Every permission the services' methods name, once each, sorted. */
export function permissionsNamedBy(services: readonly DescService[]): string[] {
  const named = [...accessRulesOf(services).values()].flatMap((r) => (r.kind === "permission" ? [r.permission] : []));
  return [...new Set(named)].sort();
}

/** The outcome of one access decision. */
export type Decision = "allow" | "unauthenticated" | "permission_denied";

/**
 * Decides a call: public passes; otherwise a caller is needed (`roles` undefined means none was
 * presented), and a role that grants the permission.
 */
export function decide(rule: AccessRule, roles: readonly string[] | undefined): Decision {
  if (rule.kind === "public") return "allow";
  if (roles === undefined) return "unauthenticated";
  return grants(roles, rule.permission) ? "allow" : "permission_denied";
}

/**
 * The one table that turns roles into permissions; access.ts decides calls with it. Permissions
 * are the `(jobmesh.v1.authz)` strings of the protos ("jobs.create"); an entry "users.*" grants
 * every permission of the resource.
 */
// @deno-types="../../gen/jobmesh/v1/auth_pb.d.ts"
import { Role } from "../../gen/jobmesh/v1/auth_pb.js";

export type RoleName = "viewer" | "operator" | "admin";
export const roleNames: readonly RoleName[] = ["viewer", "operator", "admin"];

const viewer = ["jobs.get", "jobs.list", "jobs.watch", "jobs.results", "pipelines.get", "pipelines.list", "auth.self"];
const operator = [
  ...viewer,
  "jobs.create", "jobs.cancel", "jobs.retry", "jobs.delete", "jobs.upload",
  "pipelines.create", "pipelines.update", "pipelines.delete",
];
const admin = [...operator, "users.*", "apikeys.*", "audit.*", "webhooks.*"];

/** Role → the permissions it grants. Each role includes the ones before it. */
export const rolePermissions: Readonly<Record<RoleName, readonly string[]>> = { viewer, operator, admin };

export function isRoleName(name: string): name is RoleName {
  return (roleNames as readonly string[]).includes(name);
}

export function grants(roles: readonly string[], permission: string): boolean {
  const resource = permission.slice(0, permission.indexOf(".") + 1) + "*";
  return roles.some((role) => isRoleName(role) && rolePermissions[role].some((p) => p === permission || p === resource));
}

/** Every concrete permission the roles grant among `known` (the permissions the protos use), sorted. */
export function permissionsOf(roles: readonly string[], known: Iterable<string>): string[] {
  return [...new Set(known)].filter((p) => grants(roles, p)).sort();
}

/** The highest role among `roles`, or undefined when there is none. */
export function highestRole(roles: readonly string[]): RoleName | undefined {
  return [...roleNames].reverse().find((r) => roles.includes(r));
}

/** True when every role in `wanted` is at most the highest of `held` (keys cannot exceed their creator). */
export function rolesWithin(wanted: readonly string[], held: readonly string[]): boolean {
  const top = highestRole(held);
  if (!top) return wanted.length === 0;
  return wanted.every((r) => isRoleName(r) && roleNames.indexOf(r) <= roleNames.indexOf(top));
}

/**
 * The roles a token acts with once its user holds `held`: the token's own, none above the highest
 * role held now (a role includes the ones before it, so a demoted admin's token acts as the
 * role it was demoted to, and a promotion does not raise a token issued before it).
 */
export function cappedRoles(token: readonly string[], held: readonly string[]): string[] {
  const tokenTop = highestRole(token);
  const heldTop = highestRole(held);
  if (!tokenTop || !heldTop) return [];
  return [roleNames[Math.min(roleNames.indexOf(tokenTop), roleNames.indexOf(heldTop))]];
}

const byEnum: Record<number, RoleName> = { [Role.VIEWER]: "viewer", [Role.OPERATOR]: "operator", [Role.ADMIN]: "admin" };

export function roleName(role: Role): RoleName {
  const name = byEnum[role];
  if (!name) throw new RangeError(`role ${role} has no name`);
  return name;
}

export function roleEnum(name: string): Role {
  return name === "admin" ? Role.ADMIN : name === "operator" ? Role.OPERATOR : name === "viewer" ? Role.VIEWER : Role.UNSPECIFIED;
}

/** Roles of a create request: the given ones by name, viewer when none. */
export function rolesOrViewer(roles: readonly Role[]): RoleName[] {
  return roles.length === 0 ? ["viewer"] : roles.map(roleName);
}

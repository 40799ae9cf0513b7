import t from "tap";
import { decide } from "./access.ts";
import { cappedRoles, grants, permissionsOf, rolesWithin } from "./roles.ts";

void t.test("roles - each role includes the ones before it", async (t) => {
  t.ok(grants(["viewer"], "jobs.get"));
  t.notOk(grants(["viewer"], "jobs.create"));
  t.ok(grants(["operator"], "jobs.get") && grants(["operator"], "pipelines.delete"));
  t.notOk(grants(["operator"], "users.create"));
  t.ok(grants(["admin"], "users.create") && grants(["admin"], "audit.read") && grants(["admin"], "jobs.upload"));
});

void t.test("roles - unknown roles and unknown permissions grant nothing", async (t) => {
  t.notOk(grants(["root"], "jobs.get"));
  t.notOk(grants(["admin"], "secrets.read"), "admin's wildcards are per resource, not global");
  t.notOk(grants([], "auth.self"));
});

void t.test("decide - public passes, no caller is unauthenticated, a missing permission is denied", async (t) => {
  t.equal(decide({ kind: "public" }, undefined), "allow");
  t.equal(decide({ kind: "permission", permission: "jobs.get" }, undefined), "unauthenticated");
  t.equal(decide({ kind: "permission", permission: "jobs.create" }, ["viewer"]), "permission_denied");
  t.equal(decide({ kind: "permission", permission: "jobs.create" }, ["viewer", "operator"]), "allow");
});

void t.test("permissionsOf and rolesWithin", async (t) => {
  t.same(permissionsOf(["viewer"], ["jobs.create", "jobs.get", "auth.self", "jobs.get"]), ["auth.self", "jobs.get"]);
  t.ok(rolesWithin(["viewer", "operator"], ["operator"]));
  t.notOk(rolesWithin(["admin"], ["operator"]));
  t.notOk(rolesWithin(["viewer"], []));
});

void t.test("cappedRoles - a token acts with no role above what its user holds now, and is never raised", async (t) => {
  t.same(cappedRoles(["admin"], ["viewer"]), ["viewer"], "demoted");
  t.same(cappedRoles(["viewer"], ["admin"]), ["viewer"], "promoted: the old token stays as it was");
  t.same(cappedRoles(["operator"], ["operator", "viewer"]), ["operator"]);
  t.same(cappedRoles(["operator"], []), [], "no role held: none left");
});

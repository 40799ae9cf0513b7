import t from "tap";
import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { Role } from "../gen/jobmesh/v1/auth_pb.js";
import { ensureBootstrapAdmin } from "../internal/mesh/servers.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({ JOBMESH_ADMIN_EMAIL: "root@example.com" }, { auth: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const client = auth.client;
const admin = await auth.headersFor("admin");
const password = "a-long-enough-password";

async function codeOf(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

t.test("bootstrap - the first admin gets a generated password, returned once, that logs in", async (t) => {
  const first = await ensureBootstrapAdmin(mesh.infra);
  t.equal(first.email, "root@example.com");
  t.equal(first.created, true);
  t.ok(first.generatedPassword && first.generatedPassword.length >= 20);
  const again = await ensureBootstrapAdmin(mesh.infra);
  t.equal(again.created, false);
  t.equal(again.generatedPassword, undefined, "never shown again");
  const session = await client.login({ email: "root@example.com", password: first.generatedPassword! });
  const { identity } = await client.getCurrentIdentity({}, { headers: { authorization: `Bearer ${session.accessToken}` } });
  t.same(identity?.roles, [Role.ADMIN]);
  t.equal(identity?.tenant, mesh.infra.bootstrapTenantId);
});

t.test("create - defaults to viewer, is idempotent on request_id, refuses a duplicate email (any case)", async (t) => {
  const requestId = randomUUID();
  const a = await client.createUser({ user: { email: "Dana@Example.com", displayName: "Dana" }, password, requestId }, { headers: admin });
  t.same(a.user?.roles, [Role.VIEWER]);
  t.equal(a.user?.email, "Dana@Example.com");
  const b = await client.createUser({ user: { email: "Dana@Example.com" }, password, requestId }, { headers: admin });
  t.equal(b.user?.name, a.user?.name);
  t.equal(await codeOf(client.createUser({ user: { email: "dana@example.com" }, password }, { headers: admin })), Code.AlreadyExists);
  t.equal(await codeOf(client.createUser({ user: { email: "short@example.com" }, password: "short" }, { headers: admin })), Code.InvalidArgument);
  t.equal(await codeOf(client.createUser({ user: { email: "not-an-email" }, password }, { headers: admin })), Code.InvalidArgument);
  t.equal(await codeOf(client.login({ email: "DANA@example.com", password })), "ok", "email compares case-insensitively");
});

t.test("update - masks, etag, roles; a promoted user's next token carries the new role", async (t) => {
  const { user } = await client.createUser({ user: { email: "erin@example.com" }, password }, { headers: admin });
  const updated = await client.updateUser(
    { user: { name: user!.name, etag: user!.etag, roles: [Role.OPERATOR], displayName: "ignored" }, updateMask: { paths: ["roles"] } },
    { headers: admin },
  );
  t.same(updated.user?.roles, [Role.OPERATOR]);
  t.equal(updated.user?.displayName, "", "fields outside the mask are kept");
  t.not(updated.user?.etag, user!.etag);
  t.equal(await codeOf(client.updateUser({ user: { name: user!.name, etag: user!.etag, displayName: "x" }, updateMask: { paths: ["display_name"] } }, { headers: admin })), Code.Aborted);
  t.equal(await codeOf(client.updateUser({ user: { name: user!.name, email: "x@example.com" }, updateMask: { paths: ["email"] } }, { headers: admin })), Code.InvalidArgument);
  const session = await client.login({ email: "erin@example.com", password });
  const { identity } = await client.getCurrentIdentity({}, { headers: { authorization: `Bearer ${session.accessToken}` } });
  t.same(identity?.roles, [Role.OPERATOR]);
  t.ok(identity?.permissions.includes("pipelines.create"));
});

t.test("list - pages, filters and order", async (t) => {
  for (let i = 0; i < 5; i++) await client.createUser({ user: { email: `page-${i}@example.com`, roles: [i % 2 ? Role.OPERATOR : Role.VIEWER] }, password }, { headers: admin });
  const seen: string[] = [];
  let pageToken = "";
  do {
    const page = await client.listUsers({ pageSize: 2, pageToken, filter: 'email:"page-*"' }, { headers: admin });
    t.ok(page.users.length <= 2);
    seen.push(...page.users.map((u) => u.email));
    pageToken = page.nextPageToken;
  } while (pageToken);
  t.same(seen, ["page-0@example.com", "page-1@example.com", "page-2@example.com", "page-3@example.com", "page-4@example.com"]);
  const operators = await client.listUsers({ filter: 'email:"page-*" AND role = OPERATOR' }, { headers: admin });
  t.same(operators.users.map((u) => u.email), ["page-1@example.com", "page-3@example.com"]);
  const desc = await client.listUsers({ filter: 'email:"page-*"', orderBy: "email desc", pageSize: 1 }, { headers: admin });
  t.equal(desc.users[0].email, "page-4@example.com");
  t.equal(await codeOf(client.listUsers({ filter: "password = x" }, { headers: admin })), Code.InvalidArgument);
});

t.test("delete - the user is gone and cannot log in; a stale etag is ABORTED", async (t) => {
  const { user } = await client.createUser({ user: { email: "frank@example.com" }, password }, { headers: admin });
  t.equal(await codeOf(client.deleteUser({ name: user!.name, etag: "stale" }, { headers: admin })), Code.Aborted);
  await client.deleteUser({ name: user!.name, etag: user!.etag }, { headers: admin });
  t.equal(await codeOf(client.getUser({ name: user!.name }, { headers: admin })), Code.NotFound);
  t.equal(await codeOf(client.login({ email: "frank@example.com", password })), Code.Unauthenticated);
});

t.test("support - a transport with interceptorFor(role) is signed in as that role", async (t) => {
  const { createClient } = await import("@connectrpc/connect");
  const { createConnectTransport } = await import("@connectrpc/connect-node");
  const { AuthService } = await import("../gen/jobmesh/v1/auth_pb.js");
  const signedIn = createClient(AuthService, createConnectTransport({ baseUrl: auth.server.url, httpVersion: "1.1", interceptors: [await auth.interceptorFor("operator")] }));
  const { identity } = await signedIn.getCurrentIdentity({});
  t.same(identity?.roles, [Role.OPERATOR]);
  t.equal(await codeOf(signedIn.listUsers({})), Code.PermissionDenied);
});

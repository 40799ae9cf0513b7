import t from "tap";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { PrincipalKind, Role } from "../gen/jobmesh/v1/auth_pb.js";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "./support/mesh.ts";
import { testPassword } from "./support/auth.ts";

const mesh = await startTestMesh({ JOBMESH_LOGIN_MAX_FAILURES_PER_ACCOUNT: "3", JOBMESH_LOGIN_WINDOW_SECONDS: "6" }, { auth: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const client = auth.client;

async function codeOf(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

t.test("login - returns an access token that GetCurrentIdentity accepts", async (t) => {
  const viewer = await auth.userFor("viewer");
  const res = await client.login({ email: viewer.email, password: viewer.password });
  t.equal(res.tokenType, "Bearer");
  t.match(res.refreshToken, /^jmr_/);
  const expiresIn = Number(res.expireTime!.seconds) - Date.now() / 1000;
  t.ok(expiresIn > 0 && expiresIn <= 900, `access token lives ${expiresIn} s, at most 15 min`);
  const { identity } = await client.getCurrentIdentity({}, { headers: { authorization: `Bearer ${res.accessToken}` } });
  t.equal(identity?.subject, viewer.name);
  t.equal(identity?.kind, PrincipalKind.USER);
  t.equal(identity?.email, viewer.email);
  t.equal(identity?.tenant, viewer.tenantId);
  t.same(identity?.roles, [Role.VIEWER]);
  t.ok(identity?.permissions.includes("pipelines.get"));
  t.notOk(identity?.permissions.includes("pipelines.create"));
});

t.test("login - wrong password, unknown email and disabled user fail alike with UNAUTHENTICATED", async (t) => {
  const user = await auth.newUser("viewer");
  const wrong = await client.login({ email: user.email, password: "wrong-password-123" }).catch((e: unknown) => ConnectError.from(e));
  const unknown = await client.login({ email: "nobody@example.com", password: testPassword }).catch((e: unknown) => ConnectError.from(e));
  t.ok(wrong instanceof ConnectError && unknown instanceof ConnectError);
  t.equal((wrong as ConnectError).code, Code.Unauthenticated);
  t.equal((unknown as ConnectError).code, Code.Unauthenticated);
  t.equal((wrong as ConnectError).rawMessage, (unknown as ConnectError).rawMessage);
  const admin = await auth.headersFor("admin");
  const { user: current } = await client.getUser({ name: user.name }, { headers: admin });
  await client.updateUser({ user: { name: user.name, etag: current!.etag, disabled: true }, updateMask: { paths: ["disabled"] } }, { headers: admin });
  const disabled = await client.login({ email: user.email, password: user.password }).catch((e: unknown) => ConnectError.from(e));
  t.equal((disabled as ConnectError).code, Code.Unauthenticated);
  t.equal((disabled as ConnectError).rawMessage, (unknown as ConnectError).rawMessage);
});

t.test("login - an unknown email costs about as much as a wrong password (Argon2id either way)", async (t) => {
  const time = async (email: string) => {
    const start = performance.now();
    await client.login({ email, password: "wrong-password-123" }).catch(() => {});
    return performance.now() - start;
  };
  const known: number[] = [];
  const unknown: number[] = [];
  // Interleaved, one attempt per account (the account limit is 3 here), compared by median.
  for (let i = 0; i < 5; i++) {
    known.push(await time((await auth.newUser("viewer")).email));
    unknown.push(await time(`nobody-${i}@example.com`));
  }
  const median = (xs: number[]) => xs.sort((a, b) => a - b)[2];
  const [k, u] = [median(known), median(unknown)];
  // Without the decoy hash an unknown email would answer in well under a tenth of the time.
  t.ok(u > k / 3 && u < k * 3, `unknown ${u.toFixed(1)} ms vs known ${k.toFixed(1)} ms`);
});

t.test("refresh - rotates; a spent refresh token revokes the whole family", async (t) => {
  const user = await auth.newUser("operator");
  const first = await client.login({ email: user.email, password: user.password });
  const second = await client.refreshToken({ refreshToken: first.refreshToken });
  t.not(second.refreshToken, first.refreshToken);
  t.not(second.accessToken, first.accessToken);
  const third = await client.refreshToken({ refreshToken: second.refreshToken });
  // first is spent: presenting it again is reuse, which revokes the family, including third.
  t.equal(await codeOf(client.refreshToken({ refreshToken: first.refreshToken })), Code.Unauthenticated);
  t.equal(await codeOf(client.refreshToken({ refreshToken: third.refreshToken })), Code.Unauthenticated);
  // A new login is a new family and works.
  const again = await client.login({ email: user.email, password: user.password });
  t.equal(await codeOf(client.refreshToken({ refreshToken: again.refreshToken })), "ok");
});

t.test("refresh - a disabled or deleted user's next refresh is refused", async (t) => {
  const admin = await auth.headersFor("admin");
  const disabled = await auth.newUser("viewer");
  const s1 = await client.login({ email: disabled.email, password: disabled.password });
  const { user } = await client.getUser({ name: disabled.name }, { headers: admin });
  await client.updateUser({ user: { name: disabled.name, etag: user!.etag, disabled: true }, updateMask: { paths: ["disabled"] } }, { headers: admin });
  t.equal(await codeOf(client.refreshToken({ refreshToken: s1.refreshToken })), Code.Unauthenticated);

  const deleted = await auth.newUser("viewer");
  const s2 = await client.login({ email: deleted.email, password: deleted.password });
  await client.deleteUser({ name: deleted.name }, { headers: admin });
  t.equal(await codeOf(client.refreshToken({ refreshToken: s2.refreshToken })), Code.Unauthenticated);
  t.equal(await codeOf(client.getUser({ name: deleted.name }, { headers: admin })), Code.NotFound);
});

t.test("access token - a disabled or deleted user's token stops working on every service within a second", async (t) => {
  const admin = await auth.headersFor("admin");
  const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1" }));
  /** How long until `call` is refused as UNAUTHENTICATED; fails the test after 3 s. */
  const refusedWithin = async (call: () => Promise<unknown>) => {
    const began = Date.now();
    for (;;) {
      const code = await codeOf(call());
      if (code === Code.Unauthenticated) return Date.now() - began;
      if (Date.now() - began > 3_000) return Infinity;
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  for (const how of ["disabled", "deleted"] as const) {
    const user = await auth.newUser("viewer");
    const { accessToken } = await client.login({ email: user.email, password: user.password });
    const headers = { authorization: `Bearer ${accessToken}` };
    t.equal(await codeOf(pipelines.listPipelines({}, { headers })), "ok", `${how}: works before`);
    t.equal(await codeOf(client.getCurrentIdentity({}, { headers })), "ok");
    if (how === "disabled") {
      const { user: current } = await client.getUser({ name: user.name }, { headers: admin });
      await client.updateUser({ user: { name: user.name, etag: current!.etag, disabled: true }, updateMask: { paths: ["disabled"] } }, { headers: admin });
    } else {
      await client.deleteUser({ name: user.name }, { headers: admin });
    }
    t.ok((await refusedWithin(() => pipelines.listPipelines({}, { headers }))) < 1_500, `${how}: refused by PipelineService`);
    t.ok((await refusedWithin(() => client.getCurrentIdentity({}, { headers }))) < 1_500, `${how}: refused by AuthService`);
  }
  t.equal(await codeOf(pipelines.listPipelines({}, { headers: admin })), "ok", "other users are not affected");
});

t.test("access token - a demoted user's token acts with the new role within a second; a promotion waits for a new token", async (t) => {
  const admin = await auth.headersFor("admin");
  const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1" }));
  const user = await auth.newUser("operator");
  const { accessToken } = await client.login({ email: user.email, password: user.password });
  const headers = { authorization: `Bearer ${accessToken}` };
  const create = (id: string) => pipelines.createPipeline({ pipelineId: id, pipeline: { config: { stages: [{ stage: Stage.INGEST }, { stage: Stage.OUTPUT }] } } }, { headers });
  t.equal(await codeOf(create("before-demotion")), "ok", "an operator creates pipelines");
  const setRoles = async (roles: Role[]) => {
    const { user: current } = await client.getUser({ name: user.name }, { headers: admin });
    await client.updateUser({ user: { name: user.name, etag: current!.etag, roles }, updateMask: { paths: ["roles"] } }, { headers: admin });
  };

  await setRoles([Role.VIEWER]);
  const began = Date.now();
  let code: Code | "ok" = "ok";
  for (let i = 0; Date.now() - began < 3_000; i++) {
    code = await codeOf(create(`after-demotion-${i}`));
    if (code !== "ok") break;
    await new Promise((r) => setTimeout(r, 50));
  }
  t.equal(code, Code.PermissionDenied, "the same token can no longer create");
  t.ok(Date.now() - began < 1_500, `refused within ${Date.now() - began} ms`);
  t.equal(await codeOf(pipelines.listPipelines({}, { headers })), "ok", "and still reads, as a viewer");
  const { identity } = await client.getCurrentIdentity({}, { headers });
  t.same(identity?.roles, [Role.VIEWER], "GetCurrentIdentity says what the token acts as");

  await setRoles([Role.ADMIN]);
  await new Promise((r) => setTimeout(r, 700));
  t.equal(await codeOf(client.listUsers({}, { headers })), Code.PermissionDenied, "promoted: the old token does not gain admin");
  t.equal(await codeOf(create("after-promotion")), "ok", "but acts again as the operator it was issued as");
  const fresh = await client.login({ email: user.email, password: user.password });
  t.equal(await codeOf(client.listUsers({}, { headers: { authorization: `Bearer ${fresh.accessToken}` } })), "ok", "a new token carries the new role");
});

t.test("logout - revokes the session; all_sessions revokes every one", async (t) => {
  const user = await auth.newUser("viewer");
  const a = await client.login({ email: user.email, password: user.password });
  const b = await client.login({ email: user.email, password: user.password });
  const c = await client.login({ email: user.email, password: user.password });
  const headers = { authorization: `Bearer ${a.accessToken}` };
  await client.logout({ refreshToken: a.refreshToken }, { headers });
  t.equal(await codeOf(client.refreshToken({ refreshToken: a.refreshToken })), Code.Unauthenticated);
  t.equal(await codeOf(client.refreshToken({ refreshToken: b.refreshToken })), "ok");
  await client.logout({ allSessions: true }, { headers });
  t.equal(await codeOf(client.refreshToken({ refreshToken: c.refreshToken })), Code.Unauthenticated);
  t.equal(await codeOf(client.logout({}, {})), Code.Unauthenticated, "logout needs credentials");
});

t.test("login limits - too many failures for an account is RESOURCE_EXHAUSTED with a retry delay, then it passes again", async (t) => {
  const user = await auth.newUser("viewer");
  for (let i = 0; i < 3; i++) t.equal(await codeOf(client.login({ email: user.email, password: "wrong-password-123" })), Code.Unauthenticated);
  const limited = await client.login({ email: user.email, password: user.password }).catch((e: unknown) => ConnectError.from(e));
  t.ok(limited instanceof ConnectError);
  t.equal((limited as ConnectError).code, Code.ResourceExhausted);
  t.match((limited as ConnectError).rawMessage, /retry in \d+ s/);
  const { RetryInfoSchema } = await import("../gen/google/rpc/error_details_pb.js");
  const [retry] = (limited as ConnectError).findDetails(RetryInfoSchema);
  t.ok(retry && Number(retry.retryDelay?.seconds) >= 1, "RetryInfo detail carries the delay");
  // The window is 6 s: the account is never locked for good, only until the delay it was told.
  const delay = Number(retry.retryDelay?.seconds);
  t.ok(delay <= 6, `retry in ${delay} s, within the window`);
  await new Promise((r) => setTimeout(r, delay * 1000 + 200));
  t.equal(await codeOf(client.login({ email: user.email, password: user.password })), "ok");
});

/**
 * Passwords change (ChangePassword, for oneself) and are reset (ResetUserPassword, by an admin);
 * either ends the user's sessions: refresh tokens are refused at once and access tokens within
 * about a second. Sessions also end a fixed time after login (JOBMESH_SESSION_MAX_AGE_SECONDS),
 * however often they are refreshed.
 */
import t from "tap";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Role } from "../gen/jobmesh/v1/auth_pb.js";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh, type TestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { auth: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const admin = await auth.headersFor("admin");

const codeOf = (error: unknown) => ConnectError.from(error).code;
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

function readerOf(m: TestMesh) {
  const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: m.pipelines.url, httpVersion: "1.1" }));
  return (headers: Record<string, string>) => pipelines.getPipeline({ name: "pipelines/document-default" }, { headers }).then(() => "ok" as const, codeOf);
}
const read = readerOf(mesh);

/**
 * A read once the half second each process keeps a user's standing has passed: by then the
 * change must show (Redis was told before it answered). Waiting longer under load only makes the
 * check more lenient, never a correct answer wrong.
 */
async function readPastProcessMemo(headers: Record<string, string>): Promise<Code | "ok"> {
  await new Promise((r) => setTimeout(r, 600));
  return read(headers);
}

const refresh = (refreshToken: string, m = mesh) => m.auth!.client.refreshToken({ refreshToken }).then((r) => r, (e: unknown) => codeOf(e));
const login = (email: string, password: string) => auth.client.login({ email, password }).then((r) => r, (e: unknown) => codeOf(e));

t.test("change - a user changes its password with the current one; its other sessions end, the new one works", async (t) => {
  const user = await auth.newUser("viewer");
  const here = await auth.client.login({ email: user.email, password: user.password });
  const elsewhere = await auth.client.login({ email: user.email, password: user.password });
  t.equal(await read(bearer(elsewhere.accessToken)), "ok");

  const wrong = await auth.client.changePassword({ currentPassword: "not-the-password", newPassword: "a-new-password-1234" }, { headers: bearer(here.accessToken) }).catch(codeOf);
  t.equal(wrong, Code.PermissionDenied, "a wrong current password is refused");
  const tooShort = await auth.client.changePassword({ currentPassword: user.password, newPassword: "short" }, { headers: bearer(here.accessToken) }).catch(codeOf);
  t.equal(tooShort, Code.InvalidArgument, "a new password under 12 characters is refused");

  const changed = await auth.client.changePassword({ currentPassword: user.password, newPassword: "a-new-password-1234" }, { headers: bearer(here.accessToken) });
  t.equal(await readPastProcessMemo(bearer(elsewhere.accessToken)), Code.Unauthenticated, "an access token issued before the change is refused");
  t.equal(await read(bearer(here.accessToken)), Code.Unauthenticated, "including the one that made the change");
  t.equal(await refresh(elsewhere.refreshToken), Code.Unauthenticated, "refresh tokens issued before are refused");
  t.equal(await refresh(here.refreshToken), Code.Unauthenticated);
  t.equal(await read(bearer(changed.accessToken)), "ok", "the session the change answered with works");
  const next = await refresh(changed.refreshToken);
  t.ok(typeof next === "object", "and refreshes");
  t.equal(await login(user.email, user.password), Code.Unauthenticated, "the old password no longer signs in");
  t.ok(typeof (await login(user.email, "a-new-password-1234")) === "object", "the new one does");
});

t.test("change - guessing the current password with a token is held to the login limits", async (t) => {
  const user = await auth.newUser("viewer");
  const session = await auth.client.login({ email: user.email, password: user.password });
  const guesses: (Code | "ok")[] = [];
  for (let i = 0; i < 14; i++) {
    guesses.push(await auth.client.changePassword({ currentPassword: `guess-number-${i}`, newPassword: "a-new-password-1234" }, { headers: bearer(session.accessToken) }).then(() => "ok" as const, codeOf));
  }
  const limit = mesh.isolated.config.auth.loginMaxFailuresPerAccount;
  t.same(guesses.slice(0, limit), Array(limit).fill(Code.PermissionDenied), `the first ${limit} wrong guesses are told so`);
  t.same(guesses.slice(limit), Array(14 - limit).fill(Code.ResourceExhausted), "then the account's failure budget is spent");
  t.equal(await login(user.email, user.password), Code.ResourceExhausted, "and it is the same budget Login counts");
});

t.test("change - an API key cannot change a password", async (t) => {
  const { secret } = await auth.client.createApiKey({ apiKey: { displayName: "no password", roles: [Role.VIEWER] } }, { headers: admin });
  const code = await auth.client.changePassword({ currentPassword: "whatever-it-is", newPassword: "a-new-password-1234" }, { headers: { "x-api-key": secret } }).catch(codeOf);
  t.equal(code, Code.FailedPrecondition);
});

t.test("reset - an admin sets a user's password; that user's sessions end", async (t) => {
  const user = await auth.newUser("operator");
  const session = await auth.client.login({ email: user.email, password: user.password });
  t.equal(await read(bearer(session.accessToken)), "ok");
  const viewer = await auth.headersFor("viewer");
  t.equal(await auth.client.resetUserPassword({ name: user.name, newPassword: "reset-by-admin-1234" }, { headers: viewer }).catch(codeOf), Code.PermissionDenied, "a viewer cannot reset");

  const before = (await auth.client.getUser({ name: user.name }, { headers: admin })).user!;
  const { user: after } = await auth.client.resetUserPassword({ name: user.name, newPassword: "reset-by-admin-1234" }, { headers: admin });
  t.not(after?.etag, before.etag, "the user's etag changed");
  t.equal(await readPastProcessMemo(bearer(session.accessToken)), Code.Unauthenticated, "its access token is refused");
  t.equal(await refresh(session.refreshToken), Code.Unauthenticated, "its refresh token is refused");
  t.equal(await login(user.email, user.password), Code.Unauthenticated, "the old password no longer signs in");
  const fresh = await login(user.email, "reset-by-admin-1234");
  t.ok(typeof fresh === "object" && (await read(bearer(fresh.accessToken))) === "ok", "the new one does, and its token works");
  t.equal(await auth.client.resetUserPassword({ name: "users/nobody", newPassword: "reset-by-admin-1234" }, { headers: admin }).catch(codeOf), Code.NotFound);
});

t.test("session lifetime - a refresh past JOBMESH_SESSION_MAX_AGE_SECONDS from login is refused, though each refresh rotated", async (t) => {
  const short = await startTestMesh({ JOBMESH_SESSION_MAX_AGE_SECONDS: "6" }, { auth: true });
  t.teardown(() => short.close());
  const user = await short.auth!.newUser("viewer");
  const loggedIn = Date.now();
  const first = await short.auth!.client.login({ email: user.email, password: user.password });
  t.ok(timestampDate(first.refreshTokenExpireTime!).getTime() <= loggedIn + 7_000, "the refresh token expires with the session");
  const second = await refresh(first.refreshToken, short);
  if (typeof second !== "object") throw new Error(`the first refresh was refused: ${Code[second]}`);
  t.pass("a refresh within the session works");
  await new Promise((r) => setTimeout(r, Math.max(0, loggedIn + 6_000 - Date.now()) + 500));
  t.equal(await refresh(second.refreshToken, short), Code.Unauthenticated, "past the session's age the rotated token is refused");
  const again = await short.auth!.client.login({ email: user.email, password: user.password });
  t.ok(typeof (await refresh(again.refreshToken, short)) === "object", "a new login starts a new session");
});

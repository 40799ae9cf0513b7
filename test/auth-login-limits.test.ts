import t from "tap";
import { Code, ConnectError } from "@connectrpc/connect";
import { startTestMesh } from "./support/mesh.ts";

// Four login attempts per address per 6 s window (long enough for a loaded machine).
const windowMs = 6000;
const mesh = await startTestMesh({ JOBMESH_LOGIN_MAX_ATTEMPTS_PER_IP: "4", JOBMESH_LOGIN_WINDOW_SECONDS: String(windowMs / 1000) }, { auth: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;

const codeOf = (call: Promise<unknown>) => call.then(() => "ok" as const, (e: unknown) => ConnectError.from(e).code);

t.test("login limits - one address is limited across accounts, with a retry delay, and not for longer than the window", async (t) => {
  const user = await auth.newUser("viewer"); // the admin's login is an attempt too
  await mesh.infra.cache.redis.del("login:ip:127.0.0.1"); // start from a fresh window
  t.equal(await codeOf(auth.client.login({ email: user.email, password: user.password })), "ok");
  t.equal(await codeOf(auth.client.login({ email: "someone@example.com", password: "wrong-password-123" })), Code.Unauthenticated);
  t.equal(await codeOf(auth.client.login({ email: "another@example.com", password: "wrong-password-123" })), Code.Unauthenticated);
  t.equal(await codeOf(auth.client.login({ email: user.email, password: user.password })), "ok");
  const limited = await auth.client.login({ email: user.email, password: user.password }).catch((e: unknown) => ConnectError.from(e));
  t.equal((limited as ConnectError).code, Code.ResourceExhausted, "the fifth attempt from 127.0.0.1 is limited, even with the right password");
  const delay = Number(/retry in (\d+) s/.exec((limited as ConnectError).rawMessage)?.[1]);
  t.ok(delay >= 1 && delay <= windowMs / 1000, `retry in ${delay} s, within the window`);
  await new Promise((r) => setTimeout(r, delay * 1000 + 200));
  t.equal(await codeOf(auth.client.login({ email: user.email, password: user.password })), "ok", "after the window it works again");
});

/**
 * `node cmd/auth/main.ts` from the outside: the first start creates the admin and prints its
 * generated password exactly once (never in a log line), the printed credentials log in, a
 * second start prints no password, and SIGTERM exits 0.
 */
import t from "tap";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AuthService, Role } from "../gen/jobmesh/v1/auth_pb.js";
import { freePort } from "../internal/devstack/server-process.ts";
import { isolate } from "./support/isolation.ts";

const main = join(import.meta.dirname, "../cmd/auth/main.ts");
const isolated = await isolate();
t.teardown(() => isolated.drop());

async function runAuth(port: number) {
  const child = spawn(process.execPath, [main], {
    env: { PATH: process.env.PATH ?? "", ...isolated.env, JOBMESH_AUTH_PORT: String(port), JOBMESH_LOG_LEVEL: "debug", JOBMESH_ADMIN_EMAIL: "first@example.com" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.on("data", (c: Buffer) => (output += c.toString()));
  child.stderr!.on("data", (c: Buffer) => (output += c.toString()));
  const exited = once(child, "exit").then(([code]) => code as number | null);
  const client = createClient(AuthService, createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1" }));
  const deadline = Date.now() + 30_000;
  while (!(await client.getJwks({}).then(() => true, () => false))) {
    if (Date.now() > deadline) throw new Error(`cmd/auth did not answer: ${output}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    client,
    output: () => output,
    async stop() {
      child.kill("SIGTERM");
      return exited;
    },
  };
}

t.test("cmd/auth - prints the generated admin password once; it logs in; a restart prints none", async (t) => {
  const first = await runAuth(await freePort());
  const match = /first admin created: first@example\.com with password (\S+)/.exec(first.output());
  t.ok(match, "says how to log in");
  const password = match![1];
  const session = await first.client.login({ email: "first@example.com", password });
  const { identity } = await first.client.getCurrentIdentity({}, { headers: { authorization: `Bearer ${session.accessToken}` } });
  t.same(identity?.roles, [Role.ADMIN]);
  const wrong = await first.client.login({ email: "first@example.com", password: password + "x" }).catch((e: unknown) => ConnectError.from(e).code);
  t.equal(wrong, Code.Unauthenticated);
  t.equal(await first.stop(), 0, "SIGTERM exits 0");
  t.equal(first.output().split(password).length - 1, 1, "the password appears exactly once in all output, logs included");

  const second = await runAuth(await freePort());
  t.notMatch(second.output(), /first admin created/);
  t.notOk(second.output().includes(password));
  t.equal(await second.stop(), 0);
});

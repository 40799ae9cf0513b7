// Login throttling that holds: failures are reserved before the password is hashed, so parallel
// attempts cannot slip past the limit; an account has one budget however its tenant is spelled;
// the per-address budget counts failures only, by the client address a trusted proxy names
// (x-forwarded-for from anyone else is ignored), an IPv6 client by its /64.
import t from "tap";
import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { Role } from "../gen/jobmesh/v1/auth_pb.js";
import { TooManyLoginAttemptsError } from "../internal/auth/errors.ts";
import { createLoginLimits } from "../internal/auth/login-limits.ts";
import { startTestMesh } from "./support/mesh.ts";
import type { TestMesh } from "./support/mesh.ts";

const accountLimit = 5;
const ipLimit = 4;
// 127.0.0.1 (this test, as the gateway would be) is a trusted proxy: x-forwarded-for names the
// client, so each test can be its own client. A long window: nothing expires mid-test.
const trusting = await startTestMesh(
  {
    JOBMESH_TRUSTED_PROXIES: "127.0.0.1",
    JOBMESH_LOGIN_MAX_FAILURES_PER_ACCOUNT: String(accountLimit),
    JOBMESH_LOGIN_MAX_FAILURES_PER_IP: String(ipLimit),
    JOBMESH_LOGIN_WINDOW_SECONDS: "120",
  },
  { auth: true },
);
t.teardown(() => trusting.close());

const wrong = "wrong-password-123";
const codeOf = (call: Promise<unknown>) => call.then(() => "ok" as const, (e: unknown) => ConnectError.from(e).code);
const errorOf = (call: Promise<unknown>) => call.then(() => undefined, (e: unknown) => ConnectError.from(e));
const from = (address: string) => ({ headers: { "x-forwarded-for": address } });
const login = (mesh: TestMesh, email: string, password: string, options: { tenant?: string; address?: string } = {}) =>
  mesh.auth!.client.login({ email, password, tenant: options.tenant ?? "" }, options.address ? from(options.address) : {});

t.test("login limits - 50 parallel wrong passwords for one account: exactly the limit are checked, the rest RESOURCE_EXHAUSTED", async (t) => {
  const user = await trusting.auth!.newUser("viewer");
  // Each from its own address, as a distributed guess would come: only the account limits them.
  const codes = await Promise.all(Array.from({ length: 50 }, (_, i) => codeOf(login(trusting, user.email, wrong, { address: `10.1.${i}.1` }))));
  const unauthenticated = codes.filter((c) => c === Code.Unauthenticated).length;
  const exhausted = codes.filter((c) => c === Code.ResourceExhausted).length;
  t.equal(unauthenticated, accountLimit, `${unauthenticated} passwords were checked, the limit is ${accountLimit}`);
  t.equal(exhausted, 50 - accountLimit, "every other attempt was refused before its password was checked");
  const limited = await errorOf(login(trusting, user.email, user.password, { address: "10.1.200.1" }));
  t.equal(limited?.code, Code.ResourceExhausted, "the right password waits out the window too");
  t.ok(Number(limited?.findDetails(RetryInfoSchema)[0]?.retryDelay?.seconds) >= 1, "with a RetryInfo delay");
});

t.test("login limits - an empty tenant, the tenant's slug and its id share one budget", async (t) => {
  const user = await trusting.auth!.newUser("viewer");
  const spellings = ["", user.tenant, user.tenantId];
  for (let i = 0; i < accountLimit; i++) {
    t.equal(await codeOf(login(trusting, user.email, wrong, { tenant: spellings[i % 3], address: `10.2.${i}.1` })), Code.Unauthenticated);
  }
  for (const tenant of spellings) {
    t.equal(await codeOf(login(trusting, user.email, user.password, { tenant, address: "10.2.100.1" })), Code.ResourceExhausted, `tenant "${tenant}" is limited`);
  }
});

t.test("login limits - successful logins do not use up an address's failure budget", async (t) => {
  const address = "10.3.0.1";
  const users = await Promise.all([1, 2, 3].map(() => trusting.auth!.newUser("viewer")));
  // Many users behind one proxy address sign in all day long.
  for (let i = 0; i < 3 * ipLimit; i++) {
    const user = users[i % users.length]!;
    t.equal(await codeOf(login(trusting, user.email, user.password, { address })), "ok", `success ${i + 1}`);
  }
  for (let i = 0; i < ipLimit; i++) {
    t.equal(await codeOf(login(trusting, `nobody-${i}@example.com`, wrong, { address })), Code.Unauthenticated, `failure ${i + 1} is checked`);
  }
  t.equal(await codeOf(login(trusting, users[0]!.email, users[0]!.password, { address })), Code.ResourceExhausted, "the address is limited after its failures only");
});

t.test("login limits - a trusted proxy's x-forwarded-for names the client; what the client wrote before it does not count", async (t) => {
  const user = await trusting.auth!.newUser("viewer");
  for (let i = 0; i < ipLimit; i++) t.equal(await codeOf(login(trusting, `guess-${i}@example.com`, wrong, { address: "10.4.0.1" })), Code.Unauthenticated);
  t.equal(await codeOf(login(trusting, user.email, user.password, { address: "10.4.0.1" })), Code.ResourceExhausted, "10.4.0.1 is limited");
  // The client put an address of its own first; the proxy appended the one it saw.
  t.equal(await codeOf(login(trusting, user.email, user.password, { address: "203.0.113.9, 10.4.0.1" })), Code.ResourceExhausted, "a forged first hop does not escape");
  t.equal(await codeOf(login(trusting, user.email, user.password, { address: "10.4.0.2" })), "ok", "another client behind the same proxy is not limited");
  t.equal(await codeOf(login(trusting, user.email, user.password)), "ok", "nor the proxy itself");
});

t.test("login limits - an IPv6 client is counted by its /64", async (t) => {
  const user = await trusting.auth!.newUser("viewer");
  for (let i = 0; i < ipLimit; i++) t.equal(await codeOf(login(trusting, `v6-guess-${i}@example.com`, wrong, { address: `2001:db8:5:6::${i + 1}` })), Code.Unauthenticated);
  t.equal(await codeOf(login(trusting, user.email, user.password, { address: "2001:db8:5:6:ffff::1" })), Code.ResourceExhausted, "another address of the same /64 is limited");
  t.equal(await codeOf(login(trusting, user.email, user.password, { address: "2001:db8:5:7::1" })), "ok", "the next /64 is not");
});

t.test("login - an email in several tenants with no tenant named is answered like a wrong password, and counted like one", async (t) => {
  const user = await trusting.auth!.newUser("viewer");
  const adminB = await trusting.auth!.headersFor("admin", "tenant-b");
  await trusting.auth!.client.createUser({ user: { email: user.email, roles: [Role.VIEWER] }, password: user.password }, { headers: adminB });
  const wrongPassword = await errorOf(login(trusting, `nobody-else@example.com`, wrong, { address: "10.6.0.1" }));
  const ambiguous = await errorOf(login(trusting, user.email, user.password, { address: "10.6.0.2" }));
  t.equal(ambiguous?.code, Code.Unauthenticated);
  t.equal(ambiguous?.code, wrongPassword?.code);
  t.equal(ambiguous?.rawMessage, wrongPassword?.rawMessage, "the same message");
  t.same(ambiguous?.details, wrongPassword?.details, "the same details");
  t.equal(await codeOf(login(trusting, user.email, user.password, { tenant: "tenant-b", address: "10.6.0.3" })), "ok", "naming the tenant signs in");
  for (let i = 1; i < accountLimit; i++) await codeOf(login(trusting, user.email, user.password, { address: `10.6.1.${i}` }));
  t.equal(await codeOf(login(trusting, user.email, user.password, { address: "10.6.2.1" })), Code.ResourceExhausted, "ambiguous attempts are failures of their own budget");
});

t.test("login limits - without trusted proxies x-forwarded-for is ignored; the socket's address is limited, and only for the window", async (t) => {
  const windowMs = 6000;
  const plain = await startTestMesh({ JOBMESH_LOGIN_MAX_FAILURES_PER_IP: String(ipLimit), JOBMESH_LOGIN_WINDOW_SECONDS: String(windowMs / 1000) }, { auth: true });
  t.teardown(() => plain.close());
  const user = await plain.auth!.newUser("viewer"); // successes from 127.0.0.1: they cost nothing
  for (let i = 0; i < ipLimit; i++) {
    t.equal(await codeOf(login(plain, `someone-${i}@example.com`, wrong, { address: `198.51.100.${i + 1}` })), Code.Unauthenticated);
  }
  const limited = await errorOf(login(plain, user.email, user.password, { address: "198.51.100.200" }));
  t.equal(limited?.code, Code.ResourceExhausted, "127.0.0.1 is limited, whatever address the header claims");
  t.equal(await codeOf(login(plain, user.email, user.password)), Code.ResourceExhausted, "and without the header");
  const delay = Number(limited?.findDetails(RetryInfoSchema)[0]?.retryDelay?.seconds);
  t.ok(delay >= 1 && delay <= windowMs / 1000, `retry in ${delay} s, within the window`);
  await new Promise((r) => setTimeout(r, delay * 1000 + 200));
  t.equal(await codeOf(login(plain, user.email, user.password)), "ok", "after the window it works again");
});

t.test("login limits - a reservation whose answer was lost to a timeout is asked again and counted once", async (t) => {
  // The real Redis, with every call's first answer lost on the way back, as when the event loop
  // is too busy to read it before ioredis's command timeout.
  const { redis } = trusting.infra.cache;
  const answered = new Set<string>();
  const lossy = {
    async eval(...args: Parameters<typeof redis.eval>) {
      const answer = await redis.eval(...args);
      const call = JSON.stringify(args.slice(1));
      if (answered.has(call)) return answer;
      answered.add(call);
      throw new Error("Command timed out");
    },
  };
  const limits = createLoginLimits({ cache: { ...trusting.infra.cache, redis: lossy as unknown as typeof redis }, maxFailuresPerAccount: 2, maxFailuresPerIp: 100, windowSeconds: 120 });
  const email = `lossy-${Date.now()}@example.com`;
  await limits.reserve("", email, "10.7.0.1");
  await limits.reserve("", email, "10.7.0.1");
  await t.rejects(limits.reserve("", email, "10.7.0.1"), TooManyLoginAttemptsError, "the third failure is over the limit of 2: each was counted once");
  const other = `lossy-other-${Date.now()}@example.com`;
  const first = await limits.reserve("", other, "10.7.0.2");
  await limits.reserve("", other, "10.7.0.2");
  await first.release();
  await first.release(); // a success reported twice still gives back one failure
  await limits.reserve("", other, "10.7.0.2");
  await t.rejects(limits.reserve("", other, "10.7.0.2"), TooManyLoginAttemptsError, "a released reservation was given back once");
});

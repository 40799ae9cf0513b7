/**
 * Redis is a cache, not an authority for identity: a value written into the keys the identity
 * caches use, by anyone but this deployment, is ignored and Postgres answers.
 */
import t from "tap";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createHash, randomBytes } from "node:crypto";
import { Role } from "../gen/jobmesh/v1/auth_pb.js";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { auth: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const admin = await auth.headersFor("admin");
const redis = mesh.infra.cache.redis;
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1" }));

const codeOf = (error: unknown) => ConnectError.from(error).code;
const write = (headers: Record<string, string>) =>
  pipelines
    .createPipeline({ pipelineId: `forged-${randomBytes(4).toString("hex")}`, pipeline: { config: { stages: [{ stage: 1 }, { stage: 5 }] } } }, { headers })
    .then(() => "ok" as const, codeOf);
const read = (headers: Record<string, string>) => pipelines.getPipeline({ name: "pipelines/document-default" }, { headers }).then(() => "ok" as const, codeOf);
/** A value as the cache stores it, with a MAC made with a key that is not the deployment's. */
const wronglySealed = (value: string) => `v2.${randomBytes(32).toString("base64url")}.${Date.now() + 60_000}.${value}`;

t.test("forgery - an admin API-key identity written into Redis for an unknown secret mints nothing", async (t) => {
  // A real viewer key, so the forged identity names a key that exists and is active.
  const { apiKey } = await auth.client.createApiKey({ apiKey: { displayName: "real viewer", roles: [Role.VIEWER] } }, { headers: admin });
  const tenantId = (await auth.userFor("admin")).tenantId;
  for (const [label, seal] of [["unsealed", (v: string) => v], ["sealed with another key", wronglySealed]] as const) {
    const secret = `jmk_${randomBytes(4).toString("hex")}_${randomBytes(40).toString("base64url").replace(/[-_]/g, "A").slice(0, 43)}`;
    const hash = createHash("sha256").update(secret).digest("hex");
    const identity = JSON.stringify({ subject: apiKey!.name, tenantId, roles: ["admin"], expireTime: null });
    await redis.set(`apikey:${hash}`, seal(identity), "PX", 60_000);
    t.equal(await write({ "x-api-key": secret }), Code.Unauthenticated, `${label}: the secret is refused as a key`);
    t.equal(await auth.client.exchangeApiKey({ secret }).then(() => "ok" as const, codeOf), Code.Unauthenticated, `${label}: and not exchanged`);
  }
});

t.test("forgery - a 'user active' entry written into Redis for a disabled user lets no token of it in", async (t) => {
  const user = await auth.newUser("admin");
  const login = await auth.client.login({ email: user.email, password: user.password });
  const headers = { authorization: `Bearer ${login.accessToken}` };
  t.equal(await read(headers), "ok", "works while enabled");
  const { user: current } = await auth.client.getUser({ name: user.name }, { headers: admin });
  await auth.client.updateUser({ user: { name: user.name, etag: current!.etag, disabled: true }, updateMask: { paths: ["disabled"] } }, { headers: admin });
  const userId = user.name.replace("users/", "");
  const standing = JSON.stringify({ roles: ["admin"], sessionEpoch: 0 });
  for (const [label, seal] of [["unsealed", (v: string) => v], ["sealed with another key", wronglySealed]] as const) {
    await redis.set(`user-status:${user.tenantId}:${userId}`, seal(standing), "PX", 60_000);
    // The process memo of the earlier "active" answer lasts half a second; past it only Redis or Postgres answer.
    await new Promise((r) => setTimeout(r, 600));
    t.equal(await read(headers), Code.Unauthenticated, `${label}: the disabled user's token is refused`);
  }
});

t.test("forgery - an API-key chain entry written into Redis does not revive a revoked key", async (t) => {
  const { apiKey, secret } = await auth.client.createApiKey({ apiKey: { displayName: "to revoke", roles: [Role.ADMIN] } }, { headers: admin });
  const tenantId = (await auth.userFor("admin")).tenantId;
  t.equal(await write({ "x-api-key": secret }), "ok");
  const { accessToken } = await auth.client.exchangeApiKey({ secret });
  await auth.client.revokeApiKey({ name: apiKey!.name }, { headers: admin });
  const chain = JSON.stringify({ creator: "bootstrap", roles: ["admin"] });
  await redis.set(`apikey-chain:${tenantId}:${apiKey!.name.replace("apiKeys/", "")}`, chain, "PX", 60_000);
  await new Promise((r) => setTimeout(r, 600));
  t.equal(await write({ authorization: `Bearer ${accessToken}` }), Code.Unauthenticated, "its exchanged token stays refused");
});

t.test("forgery - an entry that fails its MAC is replaced by the answer Postgres gives, so it cannot pin the cache", async (t) => {
  const user = await auth.newUser("viewer");
  const login = await auth.client.login({ email: user.email, password: user.password });
  const key = `user-status:${user.tenantId}:${user.name.replace("users/", "")}`;
  await redis.set(key, JSON.stringify({ roles: ["admin"], sessionEpoch: 0 }));
  t.equal(await read({ authorization: `Bearer ${login.accessToken}` }), "ok");
  // The replacement is written after the answer; wait for it rather than for a time.
  let stored = await redis.get(key);
  for (let i = 0; i < 100 && !stored?.startsWith("v2."); i++) {
    await new Promise((r) => setTimeout(r, 20));
    stored = await redis.get(key);
  }
  t.match(stored, /^v2\.[\w-]+\.\d+\.\{"roles":\["viewer"\],"sessionEpoch":0\}$/, "the forged entry was replaced by a sealed, true one");
  t.ok((await redis.pttl(key)) > 0, "with a lifetime, where the forged one had none");
});

t.test("forgery - a genuine entry saved while it was true and written back after its lifetime is refused", async (t) => {
  const user = await auth.newUser("admin");
  const login = await auth.client.login({ email: user.email, password: user.password });
  const headers = { authorization: `Bearer ${login.accessToken}` };
  const key = `user-status:${user.tenantId}:${user.name.replace("users/", "")}`;
  t.equal(await read(headers), "ok", "works while enabled, and the check caches its sealed answer");
  let saved = await redis.get(key);
  for (let i = 0; i < 100 && !saved?.startsWith("v2."); i++) {
    await new Promise((r) => setTimeout(r, 20));
    saved = await redis.get(key);
  }
  t.match(saved, /^v2\./, "an entry this deployment sealed");
  const { user: current } = await auth.client.getUser({ name: user.name }, { headers: admin });
  await auth.client.updateUser({ user: { name: user.name, etag: current!.etag, disabled: true }, updateMask: { paths: ["disabled"] } }, { headers: admin });
  // Past the lifetime sealed into it, the saved entry is written back for good (no TTL).
  const expires = Number(saved!.split(".")[2]);
  await new Promise((r) => setTimeout(r, Math.max(0, expires - Date.now()) + 100));
  await redis.set(key, saved!);
  await new Promise((r) => setTimeout(r, 600));
  t.equal(await read(headers), Code.Unauthenticated, "the disabled user's token stays refused");
});

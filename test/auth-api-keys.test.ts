import t from "tap";
import { toJsonString } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { randomUUID } from "node:crypto";
import { ApiKeyState, GetApiKeyResponseSchema, ListApiKeysResponseSchema, PrincipalKind, Role } from "../gen/jobmesh/v1/auth_pb.js";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { auth: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const admin = await auth.headersFor("admin");
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1" }));

async function getWith(headers: Record<string, string>): Promise<Code | "ok"> {
  try {
    await pipelines.getPipeline({ name: "pipelines/document-default" }, { headers });
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

/** Milliseconds until `headers` stop working, polling every 50 ms for at most `limitMs` (+1 s). */
async function msUntilRefused(headers: Record<string, string>, limitMs: number): Promise<number> {
  const start = Date.now();
  while (Date.now() - start < limitMs + 1000) {
    if ((await getWith(headers)) === Code.Unauthenticated) return Date.now() - start;
    await new Promise((r) => setTimeout(r, 50));
  }
  return Infinity;
}

t.test("create - the secret is shown once, in the jmk_<prefix>_<secret> shape, and never again", async (t) => {
  const requestId = randomUUID();
  const created = await auth.client.createApiKey({ apiKey: { displayName: "ci", roles: [Role.OPERATOR] }, requestId }, { headers: admin });
  t.match(created.secret, /^jmk_[a-z0-9]{8}_[A-Za-z0-9]{43}$/);
  t.equal(created.apiKey?.prefix, created.secret.slice(0, 12));
  t.equal(created.apiKey?.state, ApiKeyState.ACTIVE);
  t.equal(created.apiKey?.creator, (await auth.userFor("admin")).name);
  const repeated = await auth.client.createApiKey({ apiKey: { displayName: "ci", roles: [Role.OPERATOR] }, requestId }, { headers: admin });
  t.equal(repeated.apiKey?.name, created.apiKey?.name, "request_id makes it idempotent");
  t.equal(repeated.secret, "", "a repeat does not show the secret again");
  const got = await auth.client.getApiKey({ name: created.apiKey!.name }, { headers: admin });
  const listed = await auth.client.listApiKeys({}, { headers: admin });
  t.notOk(toJsonString(GetApiKeyResponseSchema, got).includes(created.secret.slice(13)), "GetApiKey does not carry the secret");
  t.notOk(toJsonString(ListApiKeysResponseSchema, listed).includes(created.secret.slice(13)), "ListApiKeys does not carry the secret");
  const { rows } = await mesh.infra.db.query<{ secret_hash: Buffer }>("SELECT secret_hash FROM api_keys");
  t.notOk(rows.some((r) => r.secret_hash.toString("utf8").includes(created.secret)), "only a hash is stored");
});

t.test("use - as x-api-key, as a bearer, and exchanged for an access token; last use is recorded", async (t) => {
  const { apiKey, secret } = await auth.client.createApiKey({ apiKey: { displayName: "reader", roles: [Role.VIEWER] } }, { headers: admin });
  t.equal(await getWith({ "x-api-key": secret }), "ok");
  t.equal(await getWith({ authorization: `Bearer ${secret}` }), "ok");
  const exchanged = await auth.client.exchangeApiKey({ secret });
  t.equal(await getWith({ authorization: `Bearer ${exchanged.accessToken}` }), "ok");
  const { identity } = await auth.client.getCurrentIdentity({}, { headers: { authorization: `Bearer ${exchanged.accessToken}` } });
  t.equal(identity?.subject, apiKey!.name);
  t.equal(identity?.kind, PrincipalKind.API_KEY);
  t.equal(identity?.displayName, "reader");
  t.same(identity?.roles, [Role.VIEWER]);
  const { apiKey: used } = await auth.client.getApiKey({ name: apiKey!.name }, { headers: admin });
  t.ok(used?.lastUsedTime, "last_used_time is set");
  t.equal(await getWith({ "x-api-key": secret.slice(0, -1) + (secret.endsWith("A") ? "B" : "A") }), Code.Unauthenticated, "a wrong secret is refused");
});

t.test("revoke - RevokeApiKey stops the key and the tokens exchanged from it everywhere within a second, and the exchange at once", async (t) => {
  const { apiKey, secret } = await auth.client.createApiKey({ apiKey: { displayName: "to-revoke" } }, { headers: admin });
  t.equal(await getWith({ "x-api-key": secret }), "ok", "works, and is now cached");
  const exchanged = await auth.client.exchangeApiKey({ secret });
  t.equal(await getWith({ authorization: `Bearer ${exchanged.accessToken}` }), "ok", "so does a token exchanged from it");
  const { apiKey: revoked } = await auth.client.revokeApiKey({ name: apiKey!.name }, { headers: admin });
  t.equal(revoked?.state, ApiKeyState.REVOKED);
  t.ok(revoked?.revokeTime);
  const ms = await msUntilRefused({ "x-api-key": secret }, 1000);
  t.ok(ms <= 1000, `refused after ${ms} ms`);
  const tokenMs = await msUntilRefused({ authorization: `Bearer ${exchanged.accessToken}` }, 1000);
  t.ok(tokenMs <= 1000, `its exchanged token refused after ${tokenMs} ms, long before the token expires`);
  t.equal(await auth.client.exchangeApiKey({ secret }).then(() => "ok", (e: unknown) => ConnectError.from(e).code), Code.Unauthenticated);
  const again = await auth.client.revokeApiKey({ name: apiKey!.name }, { headers: admin });
  t.same(again.apiKey?.revokeTime, revoked?.revokeTime, "revoking twice changes nothing");
});

t.test("revoke - even when the cache is never told (revoked in Postgres behind its back), the key stops within 5 s", async (t) => {
  const { apiKey, secret } = await auth.client.createApiKey({ apiKey: { displayName: "behind-the-back" } }, { headers: admin });
  t.equal(await getWith({ "x-api-key": secret }), "ok", "works, and is now cached in Redis");
  const { accessToken } = await auth.client.exchangeApiKey({ secret });
  t.equal(await getWith({ authorization: `Bearer ${accessToken}` }), "ok", "its exchanged token too");
  await mesh.infra.db.query("UPDATE api_keys SET revoke_time = now() WHERE api_key_id = $1", [apiKey!.name.replace("apiKeys/", "")]);
  const [ms, tokenMs] = await Promise.all([msUntilRefused({ "x-api-key": secret }, 5000), msUntilRefused({ authorization: `Bearer ${accessToken}` }, 5000)]);
  t.ok(ms <= 5000, `the key refused after ${ms} ms`);
  t.ok(tokenMs <= 5000, `its token refused after ${tokenMs} ms`);
});

t.test("expire - a key past its expire_time is refused, and its exchanged tokens do not outlive it", async (t) => {
  const expireTime = new Date(Date.now() + 2000);
  const { secret, apiKey } = await auth.client.createApiKey({ apiKey: { displayName: "short", expireTime: timestampFromDate(expireTime) } }, { headers: admin });
  t.equal(await getWith({ "x-api-key": secret }), "ok");
  const exchanged = await auth.client.exchangeApiKey({ secret });
  t.ok(Number(exchanged.expireTime!.seconds) <= Math.floor(expireTime.getTime() / 1000), "the access token expires with the key");
  await new Promise((r) => setTimeout(r, Math.max(0, expireTime.getTime() - Date.now()) + 1100));
  t.equal(await getWith({ "x-api-key": secret }), Code.Unauthenticated);
  t.equal(await getWith({ authorization: `Bearer ${exchanged.accessToken}` }), Code.Unauthenticated);
  t.equal(await auth.client.exchangeApiKey({ secret }).then(() => "ok", (e: unknown) => ConnectError.from(e).code), Code.Unauthenticated);
  t.equal((await auth.client.getApiKey({ name: apiKey!.name }, { headers: admin })).apiKey?.state, ApiKeyState.EXPIRED);
});

t.test("delete user - the API keys it created are revoked", async (t) => {
  const newAdmin = await auth.newUser("admin");
  const login = await auth.client.login({ email: newAdmin.email, password: newAdmin.password });
  const { secret } = await auth.client.createApiKey({ apiKey: { displayName: "orphan" } }, { headers: { authorization: `Bearer ${login.accessToken}` } });
  t.equal(await getWith({ "x-api-key": secret }), "ok");
  await auth.client.deleteUser({ name: newAdmin.name }, { headers: admin });
  const ms = await msUntilRefused({ "x-api-key": secret }, 1000);
  t.ok(ms <= 1000, `refused after ${ms} ms`);
});

t.test("creator - a key acts for the user who made it: refused while that user is disabled, capped at the user's role now", async (t) => {
  const maker = await auth.newUser("admin");
  const login = await auth.client.login({ email: maker.email, password: maker.password });
  const { secret } = await auth.client.createApiKey({ apiKey: { displayName: "made by an admin", roles: [Role.OPERATOR] } }, { headers: { authorization: `Bearer ${login.accessToken}` } });
  const direct = { "x-api-key": secret };
  const exchanged = { authorization: `Bearer ${(await auth.client.exchangeApiKey({ secret })).accessToken}` };
  const update = async (fields: { disabled?: boolean; roles?: Role[] }) => {
    const { user } = await auth.client.getUser({ name: maker.name }, { headers: admin });
    const paths = Object.keys(fields);
    await auth.client.updateUser({ user: { name: maker.name, etag: user!.etag, ...fields }, updateMask: { paths } }, { headers: admin });
  };
  const create = async (headers: Record<string, string>, id: string) => {
    try {
      await pipelines.createPipeline({ pipelineId: id, pipeline: { config: { stages: [{ stage: 1 }, { stage: 5 }] } } }, { headers });
      return "ok";
    } catch (error) {
      return ConnectError.from(error).code;
    }
  };
  t.equal(await create(direct, "by-key-1"), "ok", "an operator key creates pipelines");

  await update({ disabled: true });
  for (const [how, headers] of [["the key", direct], ["its exchanged token", exchanged]] as const) {
    const ms = await msUntilRefused(headers, 1000);
    t.ok(ms <= 1000, `${how}: refused ${ms} ms after its creator was disabled`);
  }
  await update({ disabled: false });
  t.equal(await getWith(direct), "ok", "works again once the creator is enabled");

  await update({ roles: [Role.VIEWER] });
  let code: Code | "ok" = "ok";
  const began = Date.now();
  for (let i = 0; code === "ok" && Date.now() - began < 2_000; i++) {
    code = await create(direct, `by-key-demoted-${i}`);
    if (code === "ok") await new Promise((r) => setTimeout(r, 50));
  }
  t.equal(code, Code.PermissionDenied, `the key acts as a viewer within ${Date.now() - began} ms of its creator's demotion`);
  t.equal(await create(exchanged, "by-token-demoted"), Code.PermissionDenied, "and so does its exchanged token");
  t.equal(await getWith(direct), "ok", "reading still works");
});

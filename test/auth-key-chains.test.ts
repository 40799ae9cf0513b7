/**
 * A key made by a key follows its whole chain: it acts for the user at the root, never above
 * any key of the chain, and dies with the user or with any key above it. Every case starts
 * from a fresh chain: admin U makes admin key K1; with K1, K2; with K2, K3. Each key is tried
 * as x-api-key and as an access token exchanged from it, on PipelineService.
 */
import t, { type Test } from "tap";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { randomBytes } from "node:crypto";
import { ApiKeyState, Role } from "../gen/jobmesh/v1/auth_pb.js";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { auth: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const admin = await auth.headersFor("admin");
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1" }));

type Headers = Record<string, string>;
const codeOf = (error: unknown) => ConnectError.from(error).code;

async function read(headers: Headers): Promise<Code | "ok"> {
  return pipelines.getPipeline({ name: "pipelines/document-default" }, { headers }).then(() => "ok" as const, codeOf);
}

async function write(headers: Headers): Promise<Code | "ok"> {
  const pipelineId = `chain-${randomBytes(4).toString("hex")}`;
  return pipelines.createPipeline({ pipelineId, pipeline: { config: { stages: [{ stage: 1 }, { stage: 5 }] } } }, { headers }).then(() => "ok" as const, codeOf);
}

/**
 * Waits out the half second each process keeps an answer of the identity checks: past it, a
 * change must show on the next call (Redis was told before the change answered, and its entries
 * would otherwise stand for seconds). Waiting longer under load only makes a check more lenient,
 * never a correct answer wrong.
 */
const pastProcessMemo = () => new Promise((r) => setTimeout(r, 600));

interface Link {
  name: string;
  secret: string;
  /** The key as x-api-key, and an access token exchanged from it. */
  ways: [string, Headers][];
}

/** A fresh admin U and the chain K1 (made by U) → K2 (made with K1) → K3 (made with K2). */
async function chain(t: Test, k1Expire?: Date) {
  const user = await auth.newUser("admin");
  const login = await auth.client.login({ email: user.email, password: user.password });
  let maker: Headers = { authorization: `Bearer ${login.accessToken}` };
  const links: Link[] = [];
  for (const label of ["K1", "K2", "K3"]) {
    const expireTime = label === "K1" && k1Expire ? timestampFromDate(k1Expire) : undefined;
    const { apiKey, secret } = await auth.client.createApiKey({ apiKey: { displayName: label, roles: [Role.ADMIN], expireTime } }, { headers: maker });
    const { accessToken } = await auth.client.exchangeApiKey({ secret });
    links.push({
      name: apiKey!.name,
      secret,
      ways: [
        [`${label} as x-api-key`, { "x-api-key": secret }],
        [`a token exchanged from ${label}`, { authorization: `Bearer ${accessToken}` }],
      ],
    });
    maker = { "x-api-key": secret };
  }
  const [k1, k2, k3] = links;
  t.equal(k2.name !== k1.name && (await auth.client.getApiKey({ name: k2.name }, { headers: admin })).apiKey?.creator, k1.name, "K2's creator is K1");
  for (const link of links) for (const [how, headers] of link.ways) t.equal(await write(headers), "ok", `${how} writes before anything changes`);
  return { user, k1, k2, k3 };
}

async function updateUser(name: string, fields: { roles: Role[] }) {
  const { user } = await auth.client.getUser({ name }, { headers: admin });
  await auth.client.updateUser({ user: { name, etag: user!.etag, ...fields }, updateMask: { paths: Object.keys(fields) } }, { headers: admin });
}

const exchange = (secret: string) => auth.client.exchangeApiKey({ secret }).then(() => "ok" as const, codeOf);

t.test("chain - the root user deleted: keys made by its key, and their tokens, are refused", async (t) => {
  const { user, k2, k3 } = await chain(t);
  await auth.client.deleteUser({ name: user.name }, { headers: admin });
  await pastProcessMemo();
  for (const link of [k2, k3]) {
    for (const [how, headers] of link.ways) t.equal(await read(headers), Code.Unauthenticated, `${how} is refused`);
    t.equal(await exchange(link.secret), Code.Unauthenticated, "and is not exchanged any more");
  }
});

t.test("chain - the root user demoted to viewer: K3 reads but cannot write", async (t) => {
  const { user, k3 } = await chain(t);
  await updateUser(user.name, { roles: [Role.VIEWER] });
  await pastProcessMemo();
  for (const [how, headers] of k3.ways) {
    t.equal(await write(headers), Code.PermissionDenied, `${how} cannot write`);
    t.equal(await read(headers), "ok", `${how} still reads`);
  }
  const { accessToken } = await auth.client.exchangeApiKey({ secret: k3.secret });
  const { identity } = await auth.client.getCurrentIdentity({}, { headers: { authorization: `Bearer ${accessToken}` } });
  t.same(identity?.roles, [Role.VIEWER], "a token exchanged now says viewer");
});

t.test("chain - K1 revoked: K2 and K3 and their tokens are refused, and shown revoked", async (t) => {
  const { k1, k2, k3 } = await chain(t);
  await auth.client.revokeApiKey({ name: k1.name }, { headers: admin });
  await pastProcessMemo();
  for (const link of [k2, k3]) {
    for (const [how, headers] of link.ways) t.equal(await read(headers), Code.Unauthenticated, `${how} is refused`);
    t.equal(await exchange(link.secret), Code.Unauthenticated, "and is not exchanged any more");
    t.equal((await auth.client.getApiKey({ name: link.name }, { headers: admin })).apiKey?.state, ApiKeyState.REVOKED, `${link.name} is REVOKED`);
  }
});

t.test("chain - K1 expired: K2 and K3 and their tokens stop with it", async (t) => {
  const k1Expire = new Date(Date.now() + 4_000);
  const { k2, k3 } = await chain(t, k1Expire);
  // Redis keeps K2's and K3's answers no longer than K1 lives; then the process memo.
  await new Promise((r) => setTimeout(r, Math.max(0, k1Expire.getTime() - Date.now())));
  await pastProcessMemo();
  for (const link of [k2, k3]) {
    for (const [how, headers] of link.ways) t.equal(await read(headers), Code.Unauthenticated, `${how} is refused`);
    t.equal(await exchange(link.secret), Code.Unauthenticated, "and is not exchanged any more");
  }
});

t.test("chain - a key made by a key cannot be given a role above the chain's", async (t) => {
  const { user, k2 } = await chain(t);
  await updateUser(user.name, { roles: [Role.OPERATOR] });
  // K2 (made with K1) now acts as an operator at most, so it cannot make an admin key (nor, without apikeys.create, any key).
  await pastProcessMemo();
  const made = await auth.client.createApiKey({ apiKey: { displayName: "too high", roles: [Role.ADMIN] } }, { headers: { "x-api-key": k2.secret } }).then(() => "ok" as const, codeOf);
  t.equal(made, Code.PermissionDenied);
});

t.test("revoke - a key revoked a moment ago is never exchanged, though it was exchanged and used just before", async (t) => {
  for (let i = 0; i < 5; i++) {
    const { apiKey, secret } = await auth.client.createApiKey({ apiKey: { displayName: `revoke-at-once-${i}` } }, { headers: admin });
    // Exchanged and used: every cache layer (the process memo, Redis) now holds the key as active.
    t.equal(await exchange(secret), "ok");
    t.equal(await read({ "x-api-key": secret }), "ok");
    await auth.client.revokeApiKey({ name: apiKey!.name }, { headers: admin });
    t.equal(await exchange(secret), Code.Unauthenticated, `attempt ${i}: the exchange right after RevokeApiKey answered is refused`);
  }
});

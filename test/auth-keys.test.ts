import t from "tap";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet } from "jose";
import { randomBytes } from "node:crypto";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { createSigningKeys } from "../internal/auth/signing-keys.ts";
import { servePipelines } from "../internal/mesh/servers.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { auth: true });
t.teardown(() => mesh.close());
const auth = mesh.auth!;

t.test("jwks - the Connect JSON form of GetJwks is a JWKS document that verifies a login's token", async (t) => {
  const res = await fetch(`${auth.server.url}/jobmesh.v1.AuthService/GetJwks`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: "{}",
  });
  t.equal(res.status, 200, "public: no credentials needed");
  const jwks = (await res.json()) as JSONWebKeySet;
  t.ok(jwks.keys.length >= 1);
  for (const key of jwks.keys) {
    t.equal(key.kty, "OKP");
    t.equal(key.crv, "Ed25519");
    t.equal(key.alg, "EdDSA");
    t.equal(key.use, "sig");
    t.notOk("d" in key, "no private part");
  }
  const token = await auth.tokenFor("viewer");
  const { payload, protectedHeader } = await jwtVerify(token, createLocalJWKSet(jwks), { issuer: "jobmesh", audience: "jobmesh" });
  t.equal(protectedHeader.typ, "at+jwt");
  t.ok(protectedHeader.kid);
  t.same(payload.roles, ["viewer"]);
  t.ok(payload.exp! - payload.iat! <= 900, "exp at most 15 min after iat");
  t.ok(payload.jti && payload.sub && payload.tenant);
});

t.test("keys - the private key is sealed in Postgres and useless without the key-encryption key", async (t) => {
  const { rows } = await mesh.infra.db.query<{ kid: string; private_jwk_sealed: Buffer }>("SELECT kid, private_jwk_sealed FROM signing_keys");
  t.ok(rows.length >= 1);
  for (const row of rows) {
    const bytes = row.private_jwk_sealed.toString("latin1");
    t.notOk(bytes.includes('"d"') || bytes.includes("Ed25519"), "no JWK in the clear");
  }
  const stranger = createSigningKeys({ db: mesh.infra.db, keyEncryptionKey: randomBytes(32), rotationSeconds: 86_400 });
  await t.rejects(stranger.current(), "another key-encryption key cannot open it");
});

t.test("JOBMESH_AUTH_URL - a service that fetches the JWKS from AuthService over Connect verifies tokens", async (t) => {
  const { config } = mesh.infra;
  const remote = { ...mesh.infra, config: { ...config, auth: { ...config.auth, authUrl: auth.server.url } } };
  // This server never reads signing_keys: its verifier asks AuthService for the JWKS.
  const server = await servePipelines(remote, 0, "enforce");
  t.teardown(() => server.close());
  const client = createClient(PipelineService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
  const get = (headers: Record<string, string>) =>
    client.getPipeline({ name: "pipelines/document-default" }, { headers }).then(() => "ok" as const, (e: unknown) => ConnectError.from(e).code);
  t.equal(await get(await auth.headersFor("viewer")), "ok");
  t.equal(await get({}), Code.Unauthenticated);
  t.equal(await get({ authorization: "Bearer x.y.z" }), Code.Unauthenticated);
});

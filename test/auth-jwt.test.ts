/**
 * Access tokens as an attacker would send them (RFC 8725), against PipelineService on an
 * enforcing server: only a token signed by a current jobmesh key with every claim right passes.
 */
import t from "tap";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { base64url, exportSPKI, generateKeyPair, SignJWT, type CryptoKey, type JWTPayload } from "jose";
import { randomUUID } from "node:crypto";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { createSigningKeys, loadKeyEncryptionKey } from "../internal/auth/signing-keys.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { auth: true });
t.teardown(() => mesh.close());
const { config } = mesh.infra;
const keys = createSigningKeys({
  db: mesh.infra.db,
  keyEncryptionKey: await loadKeyEncryptionKey(config.auth.keyEncryptionKey, config.auth.signingKeyDir),
  rotationSeconds: config.auth.signingKeyRotationSeconds,
});
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1" }));
const viewer = await mesh.auth!.userFor("viewer");

async function codeWith(token: string): Promise<Code | "ok"> {
  try {
    await pipelines.getPipeline({ name: "pipelines/document-default" }, { headers: { authorization: `Bearer ${token}` } });
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

const now = () => Math.floor(Date.now() / 1000);
const goodClaims = (): JWTPayload & Record<string, unknown> => ({
  iss: config.auth.issuer,
  aud: config.auth.audience,
  sub: viewer.name,
  tenant: viewer.tenantId,
  roles: ["viewer"],
  iat: now(),
  nbf: now(),
  exp: now() + 300,
  jti: randomUUID(),
});

async function sign(claims: JWTPayload, options: { key?: CryptoKey; kid?: string } = {}) {
  const current = await keys.current();
  return new SignJWT(claims)
    .setProtectedHeader({ alg: "EdDSA", kid: options.kid ?? current.kid, typ: "at+jwt" })
    .sign(options.key ?? current.privateKey);
}

const encode = (value: unknown) => base64url.encode(JSON.stringify(value));

t.test("control - a token signed by the current key with every claim right passes", async (t) => {
  t.equal(await codeWith(await sign(goodClaims())), "ok");
  t.equal(await codeWith(await mesh.auth!.tokenFor("viewer")), "ok", "and so does a real login's token");
});

t.test("alg none - an unsigned token is refused", async (t) => {
  const { kid } = await keys.current();
  t.equal(await codeWith(`${encode({ alg: "none", kid, typ: "at+jwt" })}.${encode(goodClaims())}.`), Code.Unauthenticated);
});

t.test("HS256 keyed with the public key - algorithm confusion is refused", async (t) => {
  const { kid } = await keys.current();
  const jwks = await mesh.auth!.client.getJwks({});
  const publicJwk = jwks.keys.find((k) => k.kid === kid)!;
  const { importJWK } = await import("jose");
  const publicKey = (await importJWK({ kty: publicJwk.kty, crv: publicJwk.crv, x: publicJwk.x }, "EdDSA")) as CryptoKey;
  for (const secret of [new TextEncoder().encode(await exportSPKI(publicKey)), base64url.decode(publicJwk.x)]) {
    const token = await new SignJWT(goodClaims()).setProtectedHeader({ alg: "HS256", kid, typ: "at+jwt" }).sign(secret);
    t.equal(await codeWith(token), Code.Unauthenticated);
  }
});

t.test("wrong key - signed by a key that is not ours, under our kid", async (t) => {
  const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519" });
  t.equal(await codeWith(await sign(goodClaims(), { key: privateKey })), Code.Unauthenticated);
});

t.test("unknown kid - a kid no JWKS has", async (t) => {
  const { privateKey } = await generateKeyPair("EdDSA", { crv: "Ed25519" });
  t.equal(await codeWith(await sign(goodClaims(), { key: privateKey, kid: randomUUID() })), Code.Unauthenticated);
});

t.test("expired - exp in the past", async (t) => {
  t.equal(await codeWith(await sign({ ...goodClaims(), iat: now() - 1000, nbf: now() - 1000, exp: now() - 10 })), Code.Unauthenticated);
});

t.test("not yet valid - nbf in the future", async (t) => {
  t.equal(await codeWith(await sign({ ...goodClaims(), nbf: now() + 600 })), Code.Unauthenticated);
});

t.test("wrong iss and wrong aud", async (t) => {
  t.equal(await codeWith(await sign({ ...goodClaims(), iss: "https://evil.example.com" })), Code.Unauthenticated);
  t.equal(await codeWith(await sign({ ...goodClaims(), aud: "some-other-api" })), Code.Unauthenticated);
});

t.test("missing claims - no tenant, no roles, no sub", async (t) => {
  for (const claim of ["tenant", "roles", "sub", "exp", "jti"]) {
    const claims = goodClaims();
    delete claims[claim];
    t.equal(await codeWith(await sign(claims)), Code.Unauthenticated, `without ${claim}`);
  }
});

t.test("tampered payload - a viewer's token rewritten to admin keeps its signature and is refused", async (t) => {
  const token = await mesh.auth!.tokenFor("viewer");
  const [header, payload, signature] = token.split(".");
  const claims = JSON.parse(new TextDecoder().decode(base64url.decode(payload))) as Record<string, unknown>;
  t.same(claims.roles, ["viewer"]);
  const forged = `${header}.${encode({ ...claims, roles: ["admin"] })}.${signature}`;
  t.equal(await codeWith(forged), Code.Unauthenticated);
  t.equal(await codeWith(token), "ok");
});

t.test("malformed - garbage, a wrong scheme, an empty bearer", async (t) => {
  t.equal(await codeWith("not-a-jwt"), Code.Unauthenticated);
  const call = (authorization: string) =>
    pipelines.getPipeline({ name: "pipelines/document-default" }, { headers: { authorization } }).then(() => "ok" as const, (e: unknown) => ConnectError.from(e).code);
  t.equal(await call(`Basic ${Buffer.from("a:b").toString("base64")}`), Code.Unauthenticated);
  t.equal(await call("Bearer "), Code.Unauthenticated);
});

t.test("rotation - tokens of the retired key verify until they expire; the new kid is fetched on first sight", async (t) => {
  const before = await mesh.auth!.tokenFor("viewer");
  const oldKid = (await keys.current()).kid;
  const newKid = await keys.rotate();
  t.not(newKid, oldKid);
  const jwks = await mesh.auth!.client.getJwks({});
  t.same(new Set(jwks.keys.map((k) => k.kid)), new Set([oldKid, newKid]), "both keys are published during the overlap");
  t.equal(await codeWith(before), "ok", "a token of the old key still verifies");
  // The pipelines server has only seen the old key: the unknown kid makes it reload the JWKS.
  await new Promise((r) => setTimeout(r, 1100));
  t.equal(await codeWith(await sign(goodClaims())), "ok", "a token of the new key verifies");
});

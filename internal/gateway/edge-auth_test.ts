import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from "jose";
import { accessTokenType, createTokenVerifier, signingAlg } from "../auth/token-verifier.ts";
import { accessRulesOf, meshServices, type AccessRule } from "../contract/index.ts";
import { authorizeAtEdge, createEdgeAuth, type ApiKeyIdentity, type EdgeCaller } from "./edge-auth.ts";

const issuer = "jobmesh-test";
const audience = "jobmesh-test";

async function newSigningKey(kid: string): Promise<{ kid: string; privateKey: CryptoKey; jwk: JWK }> {
  const { publicKey, privateKey } = await generateKeyPair(signingAlg, { crv: "Ed25519", extractable: true });
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: signingAlg, use: "sig" } };
}

interface TokenOptions {
  kid: string;
  privateKey: CryptoKey;
  subject?: string;
  roles?: string[];
  issuer?: string;
  /** Seconds from now; negative for a token that has expired. */
  expiresIn?: number;
  sessionEpoch?: number;
}

function signToken(o: TokenOptions): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  const exp = now + (o.expiresIn ?? 300);
  const claims: Record<string, unknown> = { tenant: "tenant-a", roles: o.roles ?? ["viewer"] };
  if (o.sessionEpoch !== undefined) claims.session_epoch = o.sessionEpoch;
  return new SignJWT(claims)
    .setProtectedHeader({ alg: signingAlg, kid: o.kid, typ: accessTokenType })
    .setIssuer(o.issuer ?? issuer)
    .setAudience(audience)
    .setSubject(o.subject ?? "users/u1")
    .setIssuedAt(Math.min(now, exp - 60))
    .setNotBefore(Math.min(now, exp - 60))
    .setExpirationTime(exp)
    .setJti(crypto.randomUUID())
    .sign(o.privateKey);
}

/** A verifier over a JWKS the test controls, counting its loads. */
function verifierOver(jwks: JWK[]) {
  const counter = { loads: 0 };
  const verifier = createTokenVerifier({
    issuer,
    audience,
    loadJwks: () => {
      counter.loads++;
      return Promise.resolve([...jwks]);
    },
  });
  return { verifier, counter };
}

const noApiKeys = () => Promise.reject(new Error("no API key expected"));

function bearer(token: string): Headers {
  return new Headers({ authorization: `Bearer ${token}` });
}

async function refusal(promise: Promise<unknown>): Promise<ConnectError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ConnectError, `expected a ConnectError, got ${String(error)}`);
    return error;
  }
  assert.fail("expected a refusal");
}

function fakeApiKey(n: number): string {
  return `jmk_${"abcdefgh"}_${String(n).padStart(43, "x")}`;
}

Deno.test("token - a valid token names its tenant, subject, roles and a credential key that is not the token", async () => {
  const key = await newSigningKey("k1");
  const { verifier } = verifierOver([key.jwk]);
  const auth = createEdgeAuth({ verifier, identifyApiKey: noApiKeys, apiKeyCacheSeconds: 5 });
  const token = await signToken({ ...key, roles: ["operator"], sessionEpoch: 3 });
  const caller = await auth.authenticate(bearer(token));
  assert.deepEqual(caller, { tenantId: "tenant-a", subject: "users/u1", roles: ["operator"], credentialKey: "tenant-a:users/u1:3" });
  assert.ok(!caller!.credentialKey.includes(token));
});

Deno.test("token - no credential is no caller; a malformed authorization header is UNAUTHENTICATED", async () => {
  const { verifier } = verifierOver([]);
  const auth = createEdgeAuth({ verifier, identifyApiKey: noApiKeys, apiKeyCacheSeconds: 5 });
  assert.equal(await auth.authenticate(new Headers()), undefined);
  const error = await refusal(auth.authenticate(new Headers({ authorization: "Basic dXNlcjpwYXNz" })));
  assert.equal(error.code, Code.Unauthenticated);
  assert.equal(error.rawMessage, "authorization header is invalid or expired");
});

Deno.test("token - an expired token is UNAUTHENTICATED with the services' message", async () => {
  const key = await newSigningKey("k1");
  const { verifier } = verifierOver([key.jwk]);
  const auth = createEdgeAuth({ verifier, identifyApiKey: noApiKeys, apiKeyCacheSeconds: 5 });
  const error = await refusal(auth.authenticate(bearer(await signToken({ ...key, expiresIn: -60 }))));
  assert.equal(error.code, Code.Unauthenticated);
  assert.equal(error.rawMessage, "access token is invalid or expired");
});

Deno.test("token - a token from another issuer is UNAUTHENTICATED", async () => {
  const key = await newSigningKey("k1");
  const { verifier } = verifierOver([key.jwk]);
  const auth = createEdgeAuth({ verifier, identifyApiKey: noApiKeys, apiKeyCacheSeconds: 5 });
  const error = await refusal(auth.authenticate(bearer(await signToken({ ...key, issuer: "someone-else" }))));
  assert.equal(error.code, Code.Unauthenticated);
  assert.equal(error.rawMessage, "access token is invalid or expired");
});

Deno.test("token - unknown kids reload the JWKS at most once a second, and a key rotated in is found", async () => {
  const known = await newSigningKey("known");
  const forged = await newSigningKey("forged");
  const jwks = [known.jwk];
  const { verifier, counter } = verifierOver(jwks);
  const auth = createEdgeAuth({ verifier, identifyApiKey: noApiKeys, apiKeyCacheSeconds: 5 });
  await auth.authenticate(bearer(await signToken(known)));
  assert.equal(counter.loads, 1);

  const started = performance.now();
  const forgedToken = await signToken(forged);
  for (let i = 0; i < 25; i++) {
    const error = await refusal(auth.authenticate(bearer(forgedToken)));
    assert.equal(error.code, Code.Unauthenticated);
  }
  // However slow this machine, an unknown kid never reloads more often than once a second.
  const seconds = Math.floor((performance.now() - started) / 1000);
  assert.ok(counter.loads - 1 <= seconds + 1, `${counter.loads - 1} reloads in ${seconds} s`);

  const rotated = await newSigningKey("rotated");
  jwks.push(rotated.jwk);
  const rotatedToken = await signToken({ ...rotated, subject: "users/u2" });
  const deadline = Date.now() + 15_000;
  let caller: EdgeCaller | undefined;
  while (!caller) {
    try {
      caller = await auth.authenticate(bearer(rotatedToken));
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  assert.equal(caller.subject, "users/u2");
});

Deno.test("API key - one question to AuthService for a burst, cached for its seconds, asked again after", async () => {
  let clock = 1_000_000;
  const asked: string[] = [];
  let answer!: (identity: ApiKeyIdentity) => void;
  const { verifier } = verifierOver([]);
  const auth = createEdgeAuth({
    verifier,
    apiKeyCacheSeconds: 5,
    now: () => clock,
    identifyApiKey(secret) {
      asked.push(secret);
      return new Promise((resolve) => (answer = resolve));
    },
  });
  const secret = fakeApiKey(1);
  const burst = Array.from({ length: 10 }, () => auth.authenticate(new Headers({ "x-api-key": secret })));
  const deadline = Date.now() + 10_000;
  while (asked.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
  answer({ tenantId: "tenant-a", subject: "apiKeys/k1", roles: ["operator"] });
  const callers = await Promise.all(burst);
  assert.equal(asked.length, 1, "a burst with one key asks once");
  for (const caller of callers) assert.deepEqual(caller, { tenantId: "tenant-a", subject: "apiKeys/k1", roles: ["operator"], credentialKey: "tenant-a:apiKeys/k1" });

  clock += 4_900;
  await auth.authenticate(new Headers({ authorization: `Bearer ${secret}` }));
  assert.equal(asked.length, 1, "within the cache's seconds, the bearer form of the same key is not asked again");

  clock += 200;
  const again = auth.authenticate(new Headers({ "x-api-key": secret }));
  while (asked.length === 1 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
  answer({ tenantId: "tenant-a", subject: "apiKeys/k1", roles: ["viewer"] });
  assert.deepEqual((await again)?.roles, ["viewer"]);
  assert.equal(asked.length, 2, "after the cache's seconds the key is asked again");
});

Deno.test("API key - a refusal is passed on and never cached; a malformed key is refused without asking", async () => {
  let calls = 0;
  const { verifier } = verifierOver([]);
  const auth = createEdgeAuth({
    verifier,
    apiKeyCacheSeconds: 5,
    identifyApiKey() {
      calls++;
      return Promise.reject(new ConnectError("API key is invalid or expired", Code.Unauthenticated));
    },
  });
  const secret = fakeApiKey(2);
  for (let i = 0; i < 2; i++) {
    const error = await refusal(auth.authenticate(new Headers({ "x-api-key": secret })));
    assert.equal(error.code, Code.Unauthenticated);
    assert.equal(error.rawMessage, "API key is invalid or expired");
  }
  assert.equal(calls, 2, "each refused call asks again");

  const malformed = await refusal(auth.authenticate(new Headers({ "x-api-key": "jmk_not-a-key" })));
  assert.equal(malformed.code, Code.Unauthenticated);
  assert.equal(malformed.rawMessage, "API key is invalid or expired");
  assert.equal(calls, 2, "a key of the wrong shape costs no call");
});

Deno.test("API key - the cache is bounded: the least recently used identity goes first", async () => {
  const asked: string[] = [];
  const { verifier } = verifierOver([]);
  const auth = createEdgeAuth({
    verifier,
    apiKeyCacheSeconds: 5,
    maxCachedApiKeys: 2,
    identifyApiKey(secret) {
      asked.push(secret);
      return Promise.resolve({ tenantId: "t", subject: `apiKeys/${secret.slice(-2)}`, roles: ["viewer"] });
    },
  });
  const [a, b, c] = [fakeApiKey(11), fakeApiKey(12), fakeApiKey(13)];
  const use = (secret: string) => auth.authenticate(new Headers({ "x-api-key": secret }));
  await use(a);
  await use(b);
  await use(a); // a is now the most recently used
  await use(c); // evicts b
  assert.deepEqual(asked, [a, b, c]);
  await use(a);
  await use(b);
  assert.deepEqual(asked, [a, b, c, b]);
});

Deno.test("authorizeAtEdge - the contract's decision for each role, before any backend", () => {
  const rules = accessRulesOf(meshServices);
  const rule = (procedure: string): AccessRule => {
    const found = rules.get(procedure);
    assert.ok(found, procedure);
    return found;
  };
  const caller = (roles: string[]): EdgeCaller => ({ tenantId: "t", subject: "users/u", roles, credentialKey: "t:users/u" });
  const createJob = rule("/jobmesh.v1.JobService/CreateJob");
  const getJob = rule("/jobmesh.v1.JobService/GetJob");
  const login = rule("/jobmesh.v1.AuthService/Login");
  const createUser = rule("/jobmesh.v1.AuthService/CreateUser");
  assert.equal(login.kind, "public");

  const outcome = (r: AccessRule, c: EdgeCaller | undefined): Code | "allow" => {
    try {
      authorizeAtEdge(r, c);
      return "allow";
    } catch (error) {
      assert.ok(error instanceof ConnectError);
      return error.code;
    }
  };
  const matrix: [AccessRule, EdgeCaller | undefined, Code | "allow"][] = [
    [login, undefined, "allow"],
    [getJob, undefined, Code.Unauthenticated],
    [getJob, caller(["viewer"]), "allow"],
    [createJob, caller(["viewer"]), Code.PermissionDenied],
    [createJob, caller(["operator"]), "allow"],
    [createUser, caller(["operator"]), Code.PermissionDenied],
    [createUser, caller(["admin"]), "allow"],
    [getJob, caller([]), Code.PermissionDenied],
    [getJob, caller(["superuser"]), Code.PermissionDenied],
  ];
  for (const [r, c, expected] of matrix) {
    assert.equal(outcome(r, c), expected, `${JSON.stringify(r)} with ${JSON.stringify(c?.roles)}`);
  }

  assert.throws(() => authorizeAtEdge(createJob, caller(["viewer"])), (e: unknown) => e instanceof ConnectError && e.rawMessage === "the caller's roles do not grant jobs.create");
  assert.throws(() => authorizeAtEdge(getJob, undefined), (e: unknown) => e instanceof ConnectError && e.rawMessage.startsWith("this method needs credentials"));
});

import t from "tap";
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey } from "jose";
import { randomUUID } from "node:crypto";
import { InvalidTokenError } from "./errors.ts";
import { signingAlg } from "./signing-keys.ts";
import { accessTokenType, createTokenIssuer, createTokenVerifier } from "./tokens.ts";

const kid = randomUUID();
const { publicKey, privateKey } = await generateKeyPair(signingAlg, { crv: "Ed25519", extractable: true });
const publicJwk = { ...(await exportJWK(publicKey)), kid, alg: signingAlg, use: "sig" };
const verifier = createTokenVerifier({ loadJwks: async () => [publicJwk], issuer: "jobmesh", audience: "jobmesh" });

/** A token as the issuer signs one, but by a signer whose clock is `offsetSeconds` ahead of ours. */
function signedAhead(offsetSeconds: number): Promise<string> {
  const now = Math.floor(Date.now() / 1000) + offsetSeconds;
  return new SignJWT({ tenant: "t1", roles: ["viewer"] })
    .setProtectedHeader({ alg: signingAlg, kid, typ: accessTokenType })
    .setIssuer("jobmesh")
    .setAudience("jobmesh")
    .setSubject("users/u1")
    .setIssuedAt(now)
    .setNotBefore(now)
    .setExpirationTime(now + 900)
    .setJti(randomUUID())
    .sign(privateKey as CryptoKey);
}

void t.test("clock tolerance - a token from a signer 2 s ahead verifies; one 60 s ahead does not", async (t) => {
  const near = await verifier.verify(await signedAhead(2));
  t.equal(near.subject, "users/u1");
  await t.rejects(verifier.verify(await signedAhead(60)), InvalidTokenError);
});

void t.test("session epoch - a user's token carries the epoch it was issued in; one without the claim is epoch 0", async (t) => {
  const issuer = createTokenIssuer({ keys: { current: async () => ({ kid, privateKey: privateKey as CryptoKey }), rotate: async () => kid }, issuer: "jobmesh", audience: "jobmesh", ttlSeconds: 60 });
  const { token } = await issuer.issue({ subject: "users/u1", tenantId: "t1", roles: ["viewer"], sessionEpoch: 3 });
  t.equal((await verifier.verify(token)).sessionEpoch, 3);
  t.equal((await verifier.verify(await signedAhead(0))).sessionEpoch, 0);
});

void t.test("jwks - while the JWKS source is down, keys already loaded go on verifying; an unknown key id is refused", async (t) => {
  let sourceUp = true;
  let loads = 0;
  const flaky = createTokenVerifier({
    loadJwks: async () => {
      loads++;
      if (!sourceUp) throw new Error("AuthService is unavailable");
      return [publicJwk];
    },
    issuer: "jobmesh",
    audience: "jobmesh",
    maxAgeMs: 1,
    minReloadGapMs: 60_000,
  });
  t.equal((await flaky.verify(await signedAhead(0))).subject, "users/u1");
  sourceUp = false;
  await new Promise((resolve) => setTimeout(resolve, 5));
  // A different token (a verified one is remembered): its key is known, the JWKS is stale and cannot be reloaded.
  t.equal((await flaky.verify(await signedAhead(0))).subject, "users/u1", "a known key verifies while the source is down");
  const loadsAfterFailure = loads;
  t.equal((await flaky.verify(await signedAhead(0))).subject, "users/u1");
  t.equal(loads, loadsAfterFailure, "a failed reload is not retried on every call, only after the reload gap");
});

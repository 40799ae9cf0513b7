import t from "tap";
import { Webhook } from "standardwebhooks";
import { generateWebhookSecret } from "./secrets.ts";
import { secretKeyBytes, signatureHeader, signedHeaders, signOne } from "./signature.ts";

void t.test("signature - the Standard Webhooks library verifies what we sign", async (t) => {
  const secret = generateWebhookSecret();
  const body = JSON.stringify({ type: "job_succeeded", timestamp: new Date().toISOString(), data: { job: "jobs/x", emoji: "✓" } });
  const headers = signedHeaders([secret], "evt-1", body);
  t.same(new Webhook(secret).verify(body, headers), JSON.parse(body));
  t.equal(headers["webhook-id"], "evt-1");
  t.match(headers["webhook-signature"], /^v1,[A-Za-z0-9+/]+=*$/);
  t.equal(secretKeyBytes(secret).length, 32);
});

void t.test("signature - during a rotation both secrets sign, and either alone verifies", async (t) => {
  const [current, previous] = [generateWebhookSecret(), generateWebhookSecret()];
  const body = '{"type":"job_failed"}';
  const headers = signedHeaders([current, previous], "evt-2", body);
  t.equal(headers["webhook-signature"].split(" ").length, 2);
  t.ok(new Webhook(current).verify(body, headers), "a receiver that switched verifies");
  t.ok(new Webhook(previous).verify(body, headers), "a receiver that has not switched yet verifies");
  t.throws(() => new Webhook(generateWebhookSecret()).verify(body, headers), "another secret does not");
  t.throws(() => new Webhook(current).verify(body + " ", headers), "a changed body does not");
});

void t.test("signature - matches the library's own signing, byte for byte", async (t) => {
  const secret = generateWebhookSecret();
  const at = new Date(1_765_000_000_000);
  t.equal(signOne(secret, "msg_1", 1_765_000_000, "{}"), new Webhook(secret).sign("msg_1", at, "{}"));
  t.equal(signatureHeader([], "x", 1, "{}"), "", "no secret, no signature");
});

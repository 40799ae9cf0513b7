import t from "tap";
import { addressPolicyFor, checkWebhookUrl, UrlPolicyError } from "./url-policy.ts";

// Pure functions only: no socket, no DNS.

const reasonOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
    return undefined;
  } catch (e) {
    return e instanceof UrlPolicyError ? e.reason : `not a UrlPolicyError: ${String(e)}`;
  }
};

void t.test("checkWebhookUrl - https only unless allowHttp, no userinfo, literal addresses checked", async (t) => {
  t.equal(checkWebhookUrl("https://hooks.example.com/in", {}).href, "https://hooks.example.com/in");
  t.equal(checkWebhookUrl("https://8.8.8.8/in", {}).hostname, "8.8.8.8", "a public literal passes");
  t.equal(reasonOf(() => checkWebhookUrl("http://hooks.example.com/", {})), "scheme_not_allowed");
  t.equal(checkWebhookUrl("http://hooks.example.com/", { allowHttp: true }).protocol, "http:");
  for (const raw of ["ftp://hooks.example.com/", "file:///etc/passwd", "javascript:alert(1)"]) {
    t.equal(reasonOf(() => checkWebhookUrl(raw, { allowHttp: true })), "scheme_not_allowed", raw);
  }
  t.equal(reasonOf(() => checkWebhookUrl("not a url", {})), "invalid_url");
  t.equal(reasonOf(() => checkWebhookUrl("/relative", {})), "invalid_url");
  t.equal(reasonOf(() => checkWebhookUrl("https://user:pw@hooks.example.com/", {})), "userinfo_not_allowed");
  t.equal(reasonOf(() => checkWebhookUrl("https://user@hooks.example.com/", {})), "userinfo_not_allowed");
  // WHATWG URL normalises these to 127.0.0.1 before the check sees them.
  for (const raw of ["https://2130706433/", "https://0x7f.1/", "https://127.1/"]) {
    t.equal(reasonOf(() => checkWebhookUrl(raw, {})), "address_not_allowed", raw);
  }
  const e = (() => { try { checkWebhookUrl("https://10.0.0.1/", {}); } catch (err) { return err; } })();
  t.type(e, UrlPolicyError);
  t.match(e, { kind: "invalid_argument" }, "maps to INVALID_ARGUMENT through the domain error table");
});

void t.test("addressPolicyFor - allowHosts replaces allowLoopback with exact host:port entries", async (t) => {
  t.same(addressPolicyFor({}, "127.0.0.1", 80), { allowLoopback: false });
  t.same(addressPolicyFor({ allowLoopback: true }, "127.0.0.1", 80), { allowLoopback: true });
  const listed = { allowLoopback: true, allowHosts: ["127.0.0.1:8123", "[::1]:8123", "LocalHost:9000"] };
  t.same(addressPolicyFor(listed, "127.0.0.1", 8123), { allowLoopback: true });
  t.same(addressPolicyFor(listed, "127.0.0.1", 8124), { allowLoopback: false }, "another port is not listed");
  t.same(addressPolicyFor(listed, "::1", 8123), { allowLoopback: true }, "a bare IPv6 hostname matches its bracketed entry");
  t.same(addressPolicyFor(listed, "[::1]", 8123), { allowLoopback: true });
  t.same(addressPolicyFor(listed, "localhost", 9000), { allowLoopback: true }, "host names compare case-insensitively");
  t.same(addressPolicyFor(listed, "localhost", 8123), { allowLoopback: false });
  t.same(addressPolicyFor({ allowHosts: ["127.0.0.1:8123"] }, "127.0.0.1", 8123), { allowLoopback: true },
    "a listed receiver is reachable without allowLoopback");
  t.same(addressPolicyFor({ allowHosts: ["127.0.0.1:8123"] }, "127.0.0.1", 8124), { allowLoopback: false });
});

void t.test("checkWebhookUrl - the default port is the one allowHosts must name", async (t) => {
  const policy = { allowHttp: true, allowHosts: ["127.0.0.1:80", "127.0.0.1:443"] };
  t.equal(checkWebhookUrl("http://127.0.0.1/", policy).port, "");
  t.equal(checkWebhookUrl("https://127.0.0.1/", policy).port, "");
  t.equal(reasonOf(() => checkWebhookUrl("http://127.0.0.1:8080/", policy)), "address_not_allowed");
  t.equal(reasonOf(() => checkWebhookUrl("http://10.0.0.1:80/", { allowHttp: true, allowHosts: ["10.0.0.1:80"] })), "address_not_allowed",
    "allowHosts opens loopback only, never a private range");
});

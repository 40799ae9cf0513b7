import type { LookupAddress } from "node:dns";
import { createServer, type Server } from "node:http";
import net, { type AddressInfo } from "node:net";
import t, { type Test } from "tap";
import { request, type Dispatcher } from "undici";
import {
  assertResolvesAllowed, checkWebhookUrl, createGuardedDispatcher, isBlockedAddressError, UrlPolicyError,
  type ConnectLookup, type NetPolicy,
} from "../internal/netpolicy/index.ts";
import { attempts, violations } from "./support/connect-fuse.ts";

// The SSRF suite of the network policy (issue 13). Every socket in this file goes to 127.0.0.1.
// Other addresses appear only as URL literals refused before a socket exists, or as answers of a
// test lookup refused inside connect. The connect fuse (support/connect-fuse.ts) makes that a fact
// rather than a hope: a connect to a non-loopback address fails with EACCES before the kernel sees
// it, and is recorded as a violation, failing the suite.

/** A loopback HTTP server that counts the connections it accepts. */
async function listen(handler: Parameters<typeof createServer>[1]): Promise<{ server: Server; port: number; connections: () => number }> {
  let connections = 0;
  const server = createServer(handler);
  server.on("connection", () => connections++);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  t.teardown(() => { server.closeAllConnections(); server.close(); });
  return { server, port: (server.address() as AddressInfo).port, connections: () => connections };
}

const other = await listen((_req, res) => res.end("the other port"));
const receiver = await listen((req, res) => {
  if (req.url === "/redirect") res.writeHead(302, { location: `http://127.0.0.1:${other.port}/` }).end();
  else res.end("received");
});

/** A test DNS: answers from a table (or a sequence, one answer per call), and counts its calls. */
function testLookup(answers: Record<string, string[] | string[][]>): ConnectLookup & { calls: string[] } {
  const served = new Map<string, number>();
  const calls: string[] = [];
  const lookup: ConnectLookup = (hostname, options, cb) => {
    calls.push(hostname);
    const entry = answers[hostname];
    if (!entry) return cb(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: "ENOTFOUND" }), []);
    const n = served.get(hostname) ?? 0;
    served.set(hostname, n + 1);
    const list = (Array.isArray(entry[0]) ? (entry as string[][])[Math.min(n, entry.length - 1)]! : entry as string[])
      .map((address): LookupAddress => ({ address, family: net.isIP(address) }));
    if (options.all) cb(null, list);
    else cb(null, list[0]!.address, list[0]!.family);
  };
  return Object.assign(lookup, { calls });
}

const caught = (p: Promise<unknown>): Promise<unknown> => p.then(() => undefined, (e: unknown) => e);

/** GETs `url` and returns the status and body, or the error it failed with. */
async function get(dispatcher: Dispatcher, url: string): Promise<{ status: number; body: string } | { error: unknown }> {
  try {
    const res = await request(url, { dispatcher, method: "GET" });
    return { status: res.statusCode, body: await res.body.text() };
  } catch (error) {
    return { error };
  }
}

function dispatcherFor(t: Test, policy: NetPolicy, lookup?: ConnectLookup): Dispatcher {
  const dispatcher = createGuardedDispatcher(policy, { lookup, connectTimeoutMs: 10_000 });
  t.teardown(() => dispatcher.destroy());
  return dispatcher;
}

/** Runs `fn` and asserts it made no TCP connect at all, to any address. */
async function withoutConnecting<T>(t: Test, what: string, fn: () => Promise<T>): Promise<T> {
  const before = attempts.length;
  const result = await fn();
  t.same(attempts.slice(before), [], `${what}: no socket was connected`);
  return result;
}

// Hosts as they appear in a URL; each is refused whatever port it names.
const refusedLiterals = [
  "127.0.0.1", "127.1.2.3", "10.0.0.1", "10.255.255.254", "172.16.0.1", "172.31.255.255", "192.168.1.1",
  "169.254.169.254", "0.0.0.0", "[::1]", "[fc00::1]", "[fd12:3456::1]", "[fe80::1]", "[::ffff:127.0.0.1]", "[::ffff:10.0.0.1]",
  "[::ffff:169.254.169.254]", "[64:ff9b::a00:1]",
  // Outside 2000::/3: ipaddr.js calls these "unicast". [::127.0.0.1] is ::7f00:1 (IPv4-compatible, not mapped).
  "[::127.0.0.1]", "[::7f00:1]", "[::a00:1]", "[::1:2:3]", "[4000::1]", "[2001:db8::1]",
];

t.test("ssrf - literal loopback, private, link-local, metadata and IPv4-mapped addresses are refused when subscribing", async (t) => {
  for (const host of refusedLiterals) {
    const err = await caught(Promise.resolve().then(() => checkWebhookUrl(`https://${host}:${receiver.port}/hook`, {})));
    t.type(err, UrlPolicyError, host);
    t.match(err, { reason: "address_not_allowed" }, host);
    t.match(await caught(assertResolvesAllowed(new URL(`https://${host}/hook`), {})), { reason: "address_not_allowed" }, `${host} (DNS check)`);
  }
  t.equal(checkWebhookUrl("https://[2606:4700::1]/hook", {}).hostname, "[2606:4700::1]", "a public IPv6 literal passes");
});

t.test("ssrf - the dispatcher refuses the same literals at connect time, before any socket exists", async (t) => {
  // Even a URL that skipped checkWebhookUrl cannot reach them: loopback allowed, private still refused.
  const open = dispatcherFor(t, { allowHttp: true, allowLoopback: true });
  const closed = dispatcherFor(t, { allowHttp: true });
  const before = receiver.connections();
  await withoutConnecting(t, "literals", async () => {
    for (const host of refusedLiterals) {
      const loopback = host.startsWith("127.") || host === "[::1]" || host === "[::ffff:127.0.0.1]";
      const cases: [string, Dispatcher][] = loopback ? [["closed", closed]] : [["closed", closed], ["open", open]];
      for (const [name, dispatcher] of cases) {
        const r = await get(dispatcher, `http://${host}:${receiver.port}/`);
        t.ok("error" in r && isBlockedAddressError(r.error), `${host} (${name}) is refused as blocked: ${"error" in r ? String(r.error) : r.status}`);
      }
    }
  });
  t.equal(receiver.connections(), before, "the receiver saw no connection");
});

t.test("ssrf - a hostname the DNS resolves to loopback or a private address is refused, checked in connect", async (t) => {
  const answers = {
    "loopback.test": ["127.0.0.1"],
    "ten.test": ["10.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "v6-loopback.test": ["::1"],
    "ula.test": ["fc00::5"],
    "mapped.test": ["::ffff:10.0.0.1"],
    "compatible.test": ["::7f00:1"],
    // One forbidden address refuses the host: the socket might have picked it.
    "mixed.test": ["8.8.8.8", "10.0.0.1"],
  };
  const lookup = testLookup(answers);
  const dispatcher = dispatcherFor(t, {}, lookup);
  for (const host of Object.keys(answers)) {
    const url = new URL(`https://${host}:${receiver.port}/hook`);
    t.equal(checkWebhookUrl(url.href, {}).hostname, host, `${host}: a hostname passes the URL check`);
    t.match(await caught(assertResolvesAllowed(url, {}, lookup)), { reason: "address_not_allowed" }, `${host}: the subscribe-time DNS check refuses it`);
    const callsBefore = lookup.calls.length;
    const r = await withoutConnecting(t, host, () => get(dispatcher, url.href));
    t.ok("error" in r && isBlockedAddressError(r.error), `${host}: the delivery is refused as blocked`);
    t.ok(lookup.calls.length > callsBefore, `${host}: the refusal came from the lookup inside connect`);
  }
});

t.test("ssrf - DNS rebinding: public when subscribing, private at delivery, refused on the address connected to", async (t) => {
  // 8.8.8.8 is only ever an answer of the test lookup, checked and never connected to.
  const lookup = testLookup({ "rebind.test": [["8.8.8.8"], ["10.0.0.1"]] });
  const url = checkWebhookUrl(`https://rebind.test:${receiver.port}/hook`, {});
  await assertResolvesAllowed(url, {}, lookup);
  t.pass("the subscribe-time check accepts the public answer");
  const dispatcher = dispatcherFor(t, {}, lookup);
  const r = await withoutConnecting(t, "rebind.test", () => get(dispatcher, url.href));
  t.ok("error" in r && isBlockedAddressError(r.error), "the connect-time check refuses the private answer");
  t.same(lookup.calls, ["rebind.test", "rebind.test"], "resolved once to subscribe, once inside connect");
});

t.test("ssrf - a redirect to loopback is not followed: the 302 is the answer", async (t) => {
  const dispatcher = dispatcherFor(t, { allowHttp: true, allowHosts: [`127.0.0.1:${receiver.port}`] });
  const before = other.connections();
  const r = await get(dispatcher, `http://127.0.0.1:${receiver.port}/redirect`);
  t.match(r, { status: 302 }, "the receiver's 302 comes back as the response");
  t.equal(other.connections(), before, "nothing connected to the Location");
  const toOther = await withoutConnecting(t, "the Location itself", () => get(dispatcher, `http://127.0.0.1:${other.port}/`));
  t.ok("error" in toOther && isBlockedAddressError(toOther.error), "and the Location itself is refused: its port is not listed");
});

t.test("ssrf - allowLoopback + allowHosts admits exactly that receiver and no other port", async (t) => {
  const policy: NetPolicy = { allowHttp: true, allowLoopback: true, allowHosts: [`127.0.0.1:${receiver.port}`] };
  const lookup = testLookup({ localhost: ["127.0.0.1"] });
  const dispatcher = dispatcherFor(t, policy, lookup);
  t.equal(checkWebhookUrl(`http://127.0.0.1:${receiver.port}/hook`, policy).port, String(receiver.port), "the URL check admits it");
  t.match(await get(dispatcher, `http://127.0.0.1:${receiver.port}/hook`), { status: 200, body: "received" }, "the receiver is reached");
  const otherBefore = other.connections();
  await withoutConnecting(t, "unlisted loopback targets", async () => {
    for (const url of [`http://127.0.0.1:${other.port}/`, `http://localhost:${receiver.port}/`, `http://[::1]:${receiver.port}/`, `http://127.0.0.2:${receiver.port}/`]) {
      // A name is not resolved by the URL check; the DNS check and the connect refuse it (below).
      if (!url.includes("localhost")) t.throws(() => checkWebhookUrl(url, policy), UrlPolicyError, `${url}: the URL check refuses it`);
      const r = await get(dispatcher, url);
      t.ok("error" in r && isBlockedAddressError(r.error), `${url}: refused at connect`);
    }
  });
  t.equal(other.connections(), otherBefore, "the other port saw no connection");
  t.match(await caught(assertResolvesAllowed(new URL(`http://localhost:${receiver.port}/`), policy, lookup)), { reason: "address_not_allowed" },
    "the listed address under another name is refused by the DNS check too");

  // Without the list, allowLoopback opens every loopback port (the local development mesh).
  const wide = dispatcherFor(t, { allowHttp: true, allowLoopback: true });
  t.match(await get(wide, `http://127.0.0.1:${other.port}/`), { status: 200, body: "the other port" });
});

t.test("ssrf - plain http is refused at connect unless allowHttp", async (t) => {
  const dispatcher = dispatcherFor(t, { allowHosts: [`127.0.0.1:${receiver.port}`] });
  const r = await withoutConnecting(t, "http", () => get(dispatcher, `http://127.0.0.1:${receiver.port}/`));
  t.ok("error" in r && isBlockedAddressError(r.error), "http:// is refused as blocked");
  t.match(String((r as { error: unknown }).error), /http not allowed/);
});

t.test("dispatcher - connections to an allowed receiver are pooled and kept alive", async (t) => {
  const dispatcher = dispatcherFor(t, { allowHttp: true, allowHosts: [`127.0.0.1:${receiver.port}`] });
  const before = receiver.connections();
  for (let i = 0; i < 10; i++) t.match(await get(dispatcher, `http://127.0.0.1:${receiver.port}/hook`), { status: 200 });
  // undici opens a second socket when a request follows before the first is marked idle, then reuses both.
  const used = receiver.connections() - before;
  t.ok(used >= 1 && used <= 3, `ten sequential deliveries reused their connections (${used} opened)`);
});

/** The ALPN protocols a TLS ClientHello offers (the first record of a connection). */
function offeredAlpn(hello: Buffer): string[] {
  let at = 5 + 4 + 2 + 32; // record header, handshake header, version, random
  at += 1 + hello[at]!; // session id
  at += 2 + hello.readUInt16BE(at); // cipher suites
  at += 1 + hello[at]!; // compression methods
  const end = at + 2 + hello.readUInt16BE(at);
  for (at += 2; at + 4 <= end; at += 4 + hello.readUInt16BE(at + 2)) {
    if (hello.readUInt16BE(at) !== 16) continue; // application_layer_protocol_negotiation
    const names: string[] = [];
    for (let p = at + 6; p < at + 4 + hello.readUInt16BE(at + 2); p += 1 + hello[p]!) names.push(hello.toString("latin1", p + 1, p + 1 + hello[p]!));
    return names;
  }
  return [];
}

t.test("dispatcher - https offers HTTP/1.1 only (undici 8 would offer h2)", async (t) => {
  // A plain TCP listener reads the ClientHello and hangs up: no certificate is needed to see the offer.
  const hello = new Promise<Buffer>((resolve) => {
    const server = net.createServer((socket) => {
      let data = Buffer.alloc(0);
      socket.on("data", (chunk: Buffer) => {
        data = Buffer.concat([data, chunk]);
        if (data.length >= 5 && data.length >= 5 + data.readUInt16BE(3)) {
          resolve(data);
          socket.destroy();
        }
      });
      socket.on("error", () => {});
    });
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as AddressInfo).port;
      const dispatcher = dispatcherFor(t, { allowHosts: [`127.0.0.1:${port}`] });
      void get(dispatcher, `https://127.0.0.1:${port}/hook`);
    });
    t.teardown(() => server.close());
  });
  t.same(offeredAlpn(await hello), ["http/1.1"]);
});

t.test("dispatcher - the policy is copied when the dispatcher is made: a later change to it applies nowhere", async (t) => {
  const policy: NetPolicy = { allowHosts: [] };
  const dispatcher = dispatcherFor(t, policy);
  policy.allowHttp = true;
  policy.allowHosts!.push(`127.0.0.1:${receiver.port}`);
  const r = await withoutConnecting(t, "changed policy", () => get(dispatcher, `http://127.0.0.1:${receiver.port}/hook`));
  t.ok("error" in r && isBlockedAddressError(r.error), "refused under the policy it was made with");
});

// Last, so it sees every connect the suite made.
t.test("fuse - the spy saw the suite's loopback connects, and none to any other address", async (t) => {
  t.ok(attempts.some((a) => a.port === receiver.port), "connects to the receiver were recorded: zero elsewhere means none were made");
  t.same(violations, [], "no connect to a non-loopback address was ever attempted");
});

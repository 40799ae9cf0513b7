import { createHash } from "node:crypto";
import { createServer, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import t from "tap";
import {
  ingestStage, isForbiddenAddress, PermanentStageError, TransientStageError, type FetchPolicy,
} from "../internal/stages/index.ts";

// Every request in this file goes to 127.0.0.1. Addresses elsewhere appear only as inputs of the
// pure policy function or of a stubbed resolver whose answer is refused before any connect.

const caught = (p: Promise<unknown>): Promise<unknown> => p.then(() => undefined, (e: unknown) => e);
const ctx = (fetchPolicy: FetchPolicy = { allowLoopback: true }, signal = new AbortController().signal) => ({ signal, fetchPolicy });

let connections = 0;
const closedEarly: string[] = [];
const server = createServer((req, res) => {
  const path = req.url ?? "/";
  res.on("close", () => { if (!res.writableFinished) closedEarly.push(path); });
  const redirect = path.match(/^\/redirect\/(\d+)$/);
  if (redirect) {
    const left = Number(redirect[1]);
    res.writeHead(302, { location: left > 0 ? `/redirect/${left - 1}` : "/doc.txt" }).end();
  } else if (path === "/doc.txt") {
    res.writeHead(200, { "content-type": "text/plain; charset=utf-8" }).end("hello from the server");
  } else if (path === "/download") {
    res.writeHead(200, { "content-type": "application/pdf", "content-disposition": 'attachment; filename="report.pdf"' }).end("%PDF-");
  } else if (path === "/endless") {
    streamForever(res);
  } else if (path === "/declared-large") {
    res.writeHead(200, { "content-length": "5000" }).end("x".repeat(5000));
  } else if (path === "/stall") {
    res.writeHead(200).write("first bytes");
  } else if (path === "/to-private") {
    res.writeHead(301, { location: "http://10.0.0.1/internal" }).end();
  } else if (path === "/hang") {
    // never answers
  } else {
    res.writeHead(Number(path.slice(1)) || 404).end("status page");
  }
});
server.on("connection", () => connections++);

function streamForever(res: ServerResponse): void {
  res.writeHead(200, { "content-type": "application/octet-stream" });
  const chunk = Buffer.alloc(16 * 1024, 1);
  const timer = setInterval(() => res.write(chunk), 5);
  res.on("close", () => clearInterval(timer));
}

await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
t.teardown(() => { server.closeAllConnections(); server.close(); });

t.test("ingest url - body, digest, filename and media type hint", async (t) => {
  const r = await ingestStage({ kind: "url", url: `${base}/doc.txt` }, {}, ctx());
  t.equal(new TextDecoder().decode(r.bytes), "hello from the server");
  t.equal(r.size, 21);
  t.equal(r.sha256, createHash("sha256").update("hello from the server").digest("hex"));
  t.equal(r.filename, "doc.txt");
  t.equal(r.mediaTypeHint, "text/plain");
  t.equal(r.sourceKind, "url");
  const d = await ingestStage({ kind: "url", url: `${base}/download` }, {}, ctx());
  t.equal(d.filename, "report.pdf", "Content-Disposition wins over the path");
  t.equal(d.mediaTypeHint, "application/pdf");
});

t.test("ingest url - the size limit aborts a download that passes it", async (t) => {
  const err = await caught(ingestStage({ kind: "url", url: `${base}/endless` }, { maxBytes: 100_000 }, ctx()));
  t.type(err, PermanentStageError);
  t.match(err, { code: "document_too_large" });
  await new Promise((r) => setTimeout(r, 50));
  t.ok(closedEarly.includes("/endless"), "the server saw the download cut off");
  const declared = await caught(ingestStage({ kind: "url", url: `${base}/declared-large` }, { maxBytes: 1000 }, ctx()));
  t.match(declared, { code: "document_too_large" }, "a Content-Length over the limit is refused up front");
});

t.test("ingest url - 5xx, 429 and timeouts are transient; 4xx permanent", async (t) => {
  for (const status of [503, 500, 429]) {
    const err = await caught(ingestStage({ kind: "url", url: `${base}/${status}` }, {}, ctx()));
    t.type(err, TransientStageError, `${status} is transient`);
    t.match(err, { code: "fetch_failed" });
  }
  for (const status of [404, 403]) {
    const err = await caught(ingestStage({ kind: "url", url: `${base}/${status}` }, {}, ctx()));
    t.type(err, PermanentStageError, `${status} is permanent`);
    t.match(err, { code: "fetch_rejected" });
  }
  const started = Date.now();
  const timeout = await caught(ingestStage({ kind: "url", url: `${base}/hang` }, { fetchTimeoutMs: 300 }, ctx()));
  t.type(timeout, TransientStageError);
  t.match(timeout, { code: "fetch_timeout" });
  t.ok(Date.now() - started < 5000, "the timeout fired promptly");
});

t.test("ingest url - a connection refused is transient", async (t) => {
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, "127.0.0.1", resolve));
  const port = (closed.address() as AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));
  const err = await caught(ingestStage({ kind: "url", url: `http://127.0.0.1:${port}/` }, {}, ctx()));
  t.type(err, TransientStageError);
  t.match(err, { code: "fetch_failed" });
});

t.test("cancel - aborting the signal stops a running download", async (t) => {
  const controller = new AbortController();
  const reason = new Error("job cancelled");
  setTimeout(() => controller.abort(reason), 100);
  const err = await caught(ingestStage({ kind: "url", url: `${base}/stall` }, {}, ctx({ allowLoopback: true }, controller.signal)));
  t.equal(err, reason, "the stage rejects with the signal's reason");
  await new Promise((r) => setTimeout(r, 50));
  t.ok(closedEarly.includes("/stall"), "the connection was closed");
});

t.test("ingest url - redirects are followed up to 5 and each hop is checked", async (t) => {
  const r = await ingestStage({ kind: "url", url: `${base}/redirect/4` }, {}, ctx());
  t.equal(r.finalUrl, `${base}/doc.txt`, "5 redirects are followed");
  const tooMany = await caught(ingestStage({ kind: "url", url: `${base}/redirect/5` }, {}, ctx()));
  t.type(tooMany, PermanentStageError);
  t.match(tooMany, { code: "too_many_redirects" });
  const toPrivate = await caught(ingestStage({ kind: "url", url: `${base}/to-private` }, {}, ctx()));
  t.match(toPrivate, { code: "ssrf_blocked" }, "a redirect to a private address is refused");
});

t.test("ssrf - without allowLoopback, loopback URLs are refused before connecting", async (t) => {
  const before = connections;
  const port = (server.address() as AddressInfo).port;
  for (const url of [`${base}/doc.txt`, `http://localhost:${port}/doc.txt`, `http://[::1]:${port}/`, `http://2130706433:${port}/`]) {
    const err = await caught(ingestStage({ kind: "url", url }, {}, ctx({})));
    t.type(err, PermanentStageError, url);
    t.match(err, { code: "ssrf_blocked" }, url);
  }
  t.equal(connections, before, "no connection reached the server");
});

t.test("ssrf - every resolved address is checked, and the checked one is used", async (t) => {
  const resolving = (addresses: string[]): FetchPolicy["resolve"] => (_host, _opts, cb) =>
    cb(null, addresses.map((address) => ({ address, family: address.includes(":") ? 6 : 4 })));
  const port = (server.address() as AddressInfo).port;
  const rebinding = await caught(ingestStage({ kind: "url", url: `http://metadata.test:${port}/` }, {},
    ctx({ allowLoopback: true, resolve: resolving(["169.254.169.254"]) })));
  t.match(rebinding, { code: "ssrf_blocked" });
  const mixed = await caught(ingestStage({ kind: "url", url: `http://mixed.test:${port}/` }, {},
    ctx({ allowLoopback: true, resolve: resolving(["127.0.0.1", "10.1.2.3"]) })));
  t.match(mixed, { code: "ssrf_blocked" }, "one forbidden address refuses the host");
  const pinned = await ingestStage({ kind: "url", url: `http://docs.test:${port}/doc.txt` }, {},
    ctx({ allowLoopback: true, resolve: resolving(["127.0.0.1"]) }));
  t.equal(new TextDecoder().decode(pinned.bytes), "hello from the server", "the connection went to the checked address");
});

t.test("ingest url - only http and https", async (t) => {
  for (const url of ["file:///etc/passwd", "ftp://127.0.0.1/x", "not a url"]) {
    t.match(await caught(ingestStage({ kind: "url", url }, {}, ctx())), { code: "invalid_source" }, url);
  }
});

t.test("isForbiddenAddress - the SSRF policy table", async (t) => {
  const forbidden = [
    "10.0.0.1", "192.168.1.1", "172.16.0.1", "172.31.255.255", "169.254.169.254", "100.64.0.1", "127.0.0.1",
    "0.0.0.0", "255.255.255.255", "224.0.0.1", "192.0.2.1", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1",
    "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "2001:db8::1", "not-an-ip",
  ];
  for (const ip of forbidden) t.equal(isForbiddenAddress(ip), true, `${ip} is forbidden`);
  for (const ip of ["8.8.8.8", "1.1.1.1", "172.32.0.1", "2606:4700::1", "::ffff:8.8.8.8", "64:ff9b::808:808"]) {
    t.equal(isForbiddenAddress(ip), false, `${ip} is allowed`);
  }
  t.equal(isForbiddenAddress("127.0.0.1", { allowLoopback: true }), false);
  t.equal(isForbiddenAddress("::1", { allowLoopback: true }), false);
  t.equal(isForbiddenAddress("::ffff:127.0.0.1", { allowLoopback: true }), false);
  t.equal(isForbiddenAddress("10.0.0.1", { allowLoopback: true }), true, "allowLoopback opens loopback only");
});

t.test("ingest inline, text and bytes-provider - digest and size limit", async (t) => {
  const bytes = new TextEncoder().encode("héllo");
  const inline = await ingestStage({ kind: "inline", bytes, filename: "a.txt" }, {}, ctx());
  t.same({ size: inline.size, filename: inline.filename, sourceKind: inline.sourceKind }, { size: 6, filename: "a.txt", sourceKind: "inline" });
  t.equal(inline.sha256, createHash("sha256").update(bytes).digest("hex"));
  const text = await ingestStage({ kind: "text", text: "héllo" }, {}, ctx());
  t.equal(text.sha256, inline.sha256, "text is stored as UTF-8");
  const provided = await ingestStage({ kind: "bytes-provider", read: async () => bytes }, {}, ctx());
  t.equal(provided.size, 6);
  for (const source of [{ kind: "inline", bytes } as const, { kind: "text", text: "héllo" } as const, { kind: "bytes-provider", read: async () => bytes } as const]) {
    const err = await caught(ingestStage(source, { maxBytes: 5 }, ctx()));
    t.match(err, { code: "document_too_large" }, source.kind);
  }
  await t.rejects(ingestStage({ kind: "text", text: "x" }, { maxBytes: 51 * 1024 * 1024 }, ctx()), RangeError, "out-of-range options are a caller bug");
});

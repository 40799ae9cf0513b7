// Limits of a service's socket that no single client can get past: a connection that sends
// nothing (or never finishes its headers) is closed by the headers timeout, before and after the
// HTTP/1-vs-HTTP/2 sniff; an HTTP/2 connection with no open stream is closed when idle, but one
// with a quiet open stream is kept; streams past maxConcurrentStreams on one connection are
// refused (REFUSED_STREAM) while the others are served.
import t from "tap";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { readFile } from "node:fs/promises";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { createInterface } from "node:readline";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { startTestMesh } from "./support/mesh.ts";

const headersTimeoutMs = 2000;
const idleTimeoutMs = 1500;
const maxStreams = 10;
const mesh = await startTestMesh({
  JOBMESH_HEADERS_TIMEOUT_MS: String(headersTimeoutMs),
  JOBMESH_IDLE_TIMEOUT_MS: String(idleTimeoutMs),
  JOBMESH_MAX_CONCURRENT_STREAMS: String(maxStreams),
});
t.teardown(() => mesh.close());
// The flood below takes about 30 s on a busy 2-core machine; its client gives up after 150 s.
t.setTimeout(300_000);
const { port } = mesh.pipelines;

/** A gRPC health check on a connection of its own: the service answers a normal call. */
async function serving(): Promise<boolean> {
  const transport = createGrpcTransport({ baseUrl: mesh.pipelines.url });
  const res = await createClient(Health, transport).check({});
  return res.status === HealthCheckResponse_ServingStatus.SERVING;
}

/** Resolves when `socket` closes; rejects after `ms` (a hang guard: the server should have closed it). */
function closedWithin(socket: net.Socket, ms: number, what: string): Promise<void> {
  if (socket.closed) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: still open after ${ms} ms`)), ms);
    socket.once("close", () => (clearTimeout(timer), resolve()));
  });
}

function connect(): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: "127.0.0.1" }, () => resolve(socket));
    socket.once("error", reject);
  });
}

t.test("sniff - a connection that sends nothing, or part of the HTTP/2 preface, is closed by the headers timeout", async (t) => {
  const silent = await connect();
  const partial = await connect();
  partial.on("error", () => {});
  partial.write("PRI * HTTP/2.0\r\n");
  await Promise.all([closedWithin(silent, 30_000, "silent connection"), closedWithin(partial, 30_000, "half a preface")]);
  t.pass("both closed by the server");
});

t.test("HTTP/1.1 - a request whose headers never end is closed by the headers timeout", async (t) => {
  const socket = await connect();
  socket.on("error", () => {});
  let answer = "";
  socket.on("data", (chunk: Buffer) => (answer += chunk.toString()));
  socket.write(`GET /healthz HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\n`);
  await closedWithin(socket, 30_000, "unfinished headers");
  t.ok(answer === "" || answer.startsWith("HTTP/1.1 408"), `closed, with at most a 408 (got ${JSON.stringify(answer.split("\r\n")[0])})`);
});

t.test("HTTP/2 - a connection with no open stream is closed when idle, PINGs or not; one with a quiet open stream is kept", async (t) => {
  const busy = http2.connect(mesh.pipelines.url);
  busy.on("error", () => {});
  // A health Watch answers once and then stays open, quiet: WatchJob waiting for its next event.
  const stream = busy.request({ ":method": "POST", ":path": "/grpc.health.v1.Health/Watch", "content-type": "application/grpc", te: "trailers" });
  stream.on("error", () => {});
  stream.end(Buffer.alloc(5));
  await once(stream, "data");
  // Connected after the watch's last frame: its idle timer runs out after the busy one's did.
  const idle = http2.connect(mesh.pipelines.url);
  idle.on("error", () => {});
  await once(idle, "connect");
  // PINGs are frames, not streams: they do not keep an idle connection.
  const pinging = setInterval(() => idle.closed || idle.destroyed || idle.ping(() => {}), 200);
  t.teardown(() => clearInterval(pinging));
  await Promise.race([once(idle, "close"), new Promise((_, reject) => setTimeout(() => reject(new Error("idle connection not closed within 30 s")), 30_000))]);
  t.pass("the idle connection was closed");
  t.notOk(busy.closed || busy.destroyed, "the connection with an open stream is kept");
  t.notOk(stream.closed, "and so is its stream");
  // The stream's end is activity: the connection goes too once it is idle.
  stream.close();
  await Promise.race([once(busy, "close"), new Promise((_, reject) => setTimeout(() => reject(new Error("connection not closed within 30 s of its last stream")), 30_000))]);
  t.pass("closed once its stream ended");
});

// HTTP/2 frames by hand: a client that opens streams before it has read the server's SETTINGS.
const frame = (type: number, flags: number, streamId: number, payload: Buffer) => {
  const header = Buffer.alloc(9);
  header.writeUIntBE(payload.length, 0, 3);
  header[3] = type;
  header[4] = flags;
  header.writeUInt32BE(streamId, 5);
  return Buffer.concat([header, payload]);
};
// HPACK "literal header field without indexing, new name", for names and values under 127 bytes.
const hpack = (headers: [string, string][]) =>
  Buffer.concat(headers.flatMap(([name, value]) => [Buffer.from([0, name.length]), Buffer.from(name), Buffer.from([value.length]), Buffer.from(value)]));

t.test("HTTP/2 - streams past maxConcurrentStreams on one connection are refused; the others are served", async (t) => {
  const opened = maxStreams + 5;
  const socket = await connect();
  const headers = hpack([
    [":method", "POST"],
    [":scheme", "http"],
    [":path", "/grpc.health.v1.Health/Watch"],
    [":authority", `127.0.0.1:${port}`],
    ["content-type", "application/grpc"],
    ["te", "trailers"],
  ]);
  const out = [Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), frame(4, 0, 0, Buffer.alloc(0))];
  for (let i = 0; i < opened; i++) {
    const id = 2 * i + 1;
    out.push(frame(1, 0x4, id, headers), frame(0, 0x1, id, Buffer.alloc(5))); // HEADERS, then an empty request message
  }
  socket.write(Buffer.concat(out));

  const refused = new Set<number>();
  const served = new Set<number>();
  let buffered = Buffer.alloc(0);
  let ackedSettings = false;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`after 30 s: served ${[...served]}, refused ${[...refused]}`)), 30_000);
    socket.on("error", reject);
    socket.on("data", (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 9 && buffered.length >= 9 + buffered.readUIntBE(0, 3)) {
        const length = buffered.readUIntBE(0, 3);
        const [type, flags, id] = [buffered[3]!, buffered[4]!, buffered.readUInt32BE(5) & 0x7fffffff];
        const payload = buffered.subarray(9, 9 + length);
        buffered = buffered.subarray(9 + length);
        if (type === 4 && !(flags & 0x1) && !ackedSettings) {
          ackedSettings = true;
          socket.write(frame(4, 0x1, 0, Buffer.alloc(0))); // ACK the server's SETTINGS, as a client must
        }
        if (type === 0 && payload.length > 0) served.add(id); // the Watch's first message
        if (type === 3) (payload.readUInt32BE(0) === http2.constants.NGHTTP2_REFUSED_STREAM ? refused : served).add(id);
        if (type === 7) return reject(new Error(`GOAWAY, error ${payload.readUInt32BE(4)}`));
      }
      if (served.size + refused.size === opened) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  socket.destroy();
  t.equal(refused.size, opened - maxStreams, `${refused.size} streams refused with REFUSED_STREAM`);
  t.equal(served.size, maxStreams, `${served.size} streams served`);
  t.same([...served].sort((a, b) => a - b), Array.from({ length: maxStreams }, (_, i) => 2 * i + 1), "the first ones");
  t.ok(await serving(), "the service answers other connections");
});

/** The soft limit on open files of this process (Linux), which the server's sockets count against. */
async function openFileLimit(): Promise<number> {
  const limits = await readFile("/proc/self/limits", "utf8").catch(() => "");
  return Number(/^Max open files\s+(\d+)/m.exec(limits)?.[1] ?? 1024);
}

// Opens `total` connections that send nothing, at most `maxOpen` at a time (and 200 still
// connecting), each from one of four loopback source addresses so ports are not reused at once.
// Reports {open, opened} as it goes and {done, closedByServer, failures} at the end; it never
// closes a connection itself before its deadline.
const floodScript = `
import net from "node:net";
const [port, total, maxOpen, deadlineMs] = process.argv.slice(1).map(Number);
let opened = 0, open = 0, connecting = 0, closedByServer = 0, maxSeen = 0, ended = false;
const failures = {};
const sockets = new Set();
const report = (o) => process.stdout.write(JSON.stringify(o) + "\\n");
const finish = () => {
  if (ended) return;
  ended = true;
  report({ done: true, opened, closedByServer, stillOpen: open, maxSeen, failures });
  for (const s of sockets) s.destroy();
  process.exit(0);
};
setTimeout(finish, deadlineMs);
const progress = setInterval(() => report({ opened, open, closedByServer }), 250);
function openOne() {
  opened++; open++; connecting++;
  const socket = net.connect({ port, host: "127.0.0.1", localAddress: "127.0.0." + (1 + (opened % 4)) });
  sockets.add(socket);
  let failed = false, connected = false;
  socket.on("connect", () => { connected = true; connecting--; maxSeen = Math.max(maxSeen, open); pump(); });
  socket.on("error", (e) => { if (!connected || e.code !== "ECONNRESET") { failed = true; failures[e.code] = (failures[e.code] ?? 0) + 1; } });
  socket.on("close", () => {
    sockets.delete(socket); open--;
    if (!connected) connecting--;
    if (!failed) closedByServer++;
    pump();
  });
}
function pump() {
  while (open < maxOpen && connecting < 200 && opened < total) openOne();
  if (opened === total && open === 0) { clearInterval(progress); finish(); }
}
pump();
`;

t.test("idle connections - 50,000 connections that send nothing are all closed by the timeout; the service answers meanwhile", { timeout: 200_000 }, async (t) => {
  const total = 50_000;
  // Server and client each hold one descriptor per connection, in two processes; leave room
  // for the mesh's own (pools, NATS, Redis) and the client's.
  const limit = await openFileLimit();
  const maxOpen = Math.min(total, limit - 2000);
  t.comment(`open files limit ${limit}: at most ${maxOpen} of the ${total} connections open at once`);
  const deadlineMs = 150_000;
  const child = spawn(process.execPath, ["--input-type=module", "-e", floodScript, String(port), String(total), String(maxOpen), String(deadlineMs)], { stdio: ["ignore", "pipe", "inherit"] });
  t.teardown(() => child.kill("SIGKILL"));
  let checkedWhileOpen = 0;
  let busiest = 0;
  let result: { opened: number; closedByServer: number; stillOpen: number; maxSeen: number; failures: Record<string, number> } | undefined;
  for await (const line of createInterface({ input: child.stdout })) {
    const report = JSON.parse(line) as { done?: boolean; open: number } & NonNullable<typeof result>;
    if (report.done) {
      result = report;
      break;
    }
    // While thousands of idle connections are held, a normal call is still answered.
    if (report.open >= Math.min(5000, maxOpen / 2) && checkedWhileOpen < 3) {
      t.ok(await serving(), `a health check answered with ${report.open} idle connections open`);
      checkedWhileOpen++;
      busiest = Math.max(busiest, report.open);
    }
  }
  t.ok(result, "the client finished");
  t.equal(result?.opened, total, `${total} connections were opened`);
  t.equal(result?.closedByServer, total, "every one was closed by the server");
  t.equal(result?.stillOpen, 0, "none was left open");
  t.same(result?.failures, {}, "no connection failed");
  t.ok(checkedWhileOpen > 0, `checked while ${busiest} idle connections were open (the most at once: ${result?.maxSeen})`);
  t.ok(await serving(), "the service answers afterwards");
  // Plain HTTP/1.1 too, on a connection of its own.
  const status = await new Promise<number | undefined>((resolve, reject) =>
    http.get({ host: "127.0.0.1", port, path: "/healthz", agent: false }, (res) => (res.resume(), resolve(res.statusCode))).on("error", reject),
  );
  t.equal(status, 200);
});

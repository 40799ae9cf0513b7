/**
 * Issue 11's "done when", as a new user meets it: the README's gateway flow typed with the real
 * curl binary against a mesh with jobs and workers behind a real Deno gateway process. Log in,
 * create a pipeline, upload a PDF as a raw body, create a job from the upload, watch it over
 * Server-Sent Events (the connection killed mid-stream and resumed with Last-Event-ID, again and
 * again, until the job succeeds), read the same events as NDJSON, download the result.
 *
 * The mesh's stage worker is held back until the first watch has been killed after its first
 * event: a job cannot end without a worker, so that stream is provably still live when it drops,
 * whatever the machine's speed (at least one drop is asserted, not hoped for).
 */
import t from "tap";
import { execFile, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { startWorkers } from "../internal/mesh/servers.ts";
import { makePdf, PROSE } from "./stages-fixtures.ts";
import { startGatewayMesh } from "./support/gateway.ts";

// A five-stage job and a dozen curl processes on a loaded 2-core machine: a hang guard, not a target.
t.setTimeout(300_000);
const gateway = await startGatewayMesh(t, { jobs: true });
const dir = await mkdtemp(join(tmpdir(), "jobmesh-gateway-walkthrough-"));
t.teardown(() => rm(dir, { recursive: true, force: true }));

interface CurlReply {
  status: number;
  /** The headers of the last response curl read (lower-case names). */
  headers: Map<string, string>;
  body: Buffer;
}

/** The last header block of a `curl -D` dump (an interim `100 Continue` comes first). */
function parseHeaderDump(dump: string): { status: number; headers: Map<string, string> } {
  const blocks = dump.split(/\r?\n\r?\n/).filter((b) => b.startsWith("HTTP/"));
  const [statusLine = "", ...lines] = (blocks.at(-1) ?? "").split(/\r?\n/);
  const headers = new Map<string, string>();
  for (const line of lines) {
    const colon = line.indexOf(":");
    if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  return { status: Number(statusLine.split(" ")[1]), headers };
}

/** `curl -sS <args> <gateway><path>`, as a user types it; the body lands in a file, so bytes stay bytes. */
async function curl(path: string, args: string[] = []): Promise<CurlReply> {
  const headersFile = join(dir, `${randomUUID()}.headers`);
  const bodyFile = join(dir, `${randomUUID()}.body`);
  await promisify(execFile)("curl", ["-sS", "--max-time", "60", "-D", headersFile, "-o", bodyFile, ...args, `${gateway.url}${path}`]);
  const { status, headers } = parseHeaderDump(await readFile(headersFile, "utf8"));
  return { status, headers, body: await readFile(bodyFile) };
}

/** curl with a JSON body (`-d`), or a GET without one; fails the test on an answer other than 200. */
async function curlJson(path: string, options: { token?: string; body?: unknown } = {}): Promise<Record<string, unknown>> {
  const args: string[] = [];
  if (options.token) args.push("-H", `authorization: Bearer ${options.token}`);
  if (options.body !== undefined) args.push("-H", "content-type: application/json", "-d", JSON.stringify(options.body));
  const reply = await curl(path, args);
  if (reply.status !== 200) throw new Error(`${path}: HTTP ${reply.status} ${reply.body.toString("utf8")}`);
  return JSON.parse(reply.body.toString("utf8")) as Record<string, unknown>;
}

/** One job event as the gateway streamed it, with the SSE id (or none for NDJSON) it came under. */
interface StreamedEvent {
  id: string | undefined;
  sequence: number;
  type: string;
  state: string;
  eventId: string;
}

/**
 * The JobEvent of one streamed WatchJobResponse in proto3 JSON (`{"event": {...}}`). An error in
 * the stream fails the test with the gateway's words.
 */
function eventOf(message: { event?: Record<string, unknown> }, id: string | undefined): StreamedEvent {
  const e = message.event;
  if (!e) throw new Error(`the stream carried something other than an event: ${JSON.stringify(message)}`);
  return { id, sequence: Number(e.sequence), type: String(e.type), state: String(e.state), eventId: String(e.eventId) };
}

/**
 * Splits complete SSE records (blank-line separated) off `buffer`: `event: message` records are
 * job events, `: keep-alive` comments and the closing `event: end` carry none, and an
 * `event: error` (a google.rpc.Status) fails the test.
 */
function takeSseEvents(buffer: string): { events: StreamedEvent[]; rest: string } {
  const normalised = buffer.replace(/\r\n?/g, "\n");
  const records = normalised.split("\n\n");
  const rest = records.pop() ?? "";
  const events: StreamedEvent[] = [];
  for (const record of records) {
    let id: string | undefined;
    let kind = "message";
    const data: string[] = [];
    for (const line of record.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "id") id = value;
      if (field === "event") kind = value;
      if (field === "data") data.push(value);
    }
    if (kind === "error") throw new Error(`the stream ended with an error event: ${data.join("\n")}`);
    if (kind === "message" && data.length > 0) events.push(eventOf(JSON.parse(data.join("\n")) as { event?: Record<string, unknown> }, id));
  }
  return { events, rest };
}

/** Splits complete NDJSON lines (`{"result": <WatchJobResponse>}`, or `{"error": <Status>}`, which fails the test) off `buffer`. */
function takeNdjsonEvents(buffer: string): { events: StreamedEvent[]; rest: string } {
  const lines = buffer.split("\n");
  const rest = lines.pop() ?? "";
  const events = lines.filter((l) => l.trim() !== "").map((line) => {
    const { result, error } = JSON.parse(line) as { result?: { event?: Record<string, unknown> }; error?: unknown };
    if (error || !result) throw new Error(`the NDJSON stream carried an error: ${line}`);
    return eventOf(result, undefined);
  });
  return { events, rest };
}

interface StreamRun {
  /** The events taken, in order; the ones after `enough` said so are dropped as if never received. */
  events: StreamedEvent[];
  /** True when curl was still running (mid-stream) when killed. */
  killedMidStream: boolean;
  status: number;
  headers: Map<string, string>;
}

/**
 * `curl -sS -N <args> <gateway><path>`, reading the stream as it arrives; once `enough(events)`
 * holds, curl is killed with SIGKILL (the connection drops with no goodbye), or the stream ends.
 */
async function streamWithCurl(
  path: string,
  args: string[],
  take: (buffer: string) => { events: StreamedEvent[]; rest: string },
  enough: (events: StreamedEvent[]) => boolean,
): Promise<StreamRun> {
  const headersFile = join(dir, `${randomUUID()}.headers`);
  const child = spawn("curl", ["-sS", "-N", "--max-time", "120", "-D", headersFile, ...args, `${gateway.url}${path}`], { stdio: ["ignore", "pipe", "pipe"] });
  const events: StreamedEvent[] = [];
  let buffer = "";
  let stderr = "";
  let killedMidStream = false;
  let failure: unknown;
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    if (killedMidStream || failure) return;
    try {
      const taken = take(buffer + chunk);
      buffer = taken.rest;
      for (const event of taken.events) {
        events.push(event);
        if (enough(events)) {
          killedMidStream = child.exitCode === null;
          child.kill("SIGKILL");
          return;
        }
      }
    } catch (error) {
      failure = error;
      child.kill("SIGKILL");
    }
  });
  const code = await exited;
  if (failure) throw failure;
  if (!killedMidStream && code !== 0 && code !== null) throw new Error(`curl ${path} exited ${code}: ${stderr}`);
  const { status, headers } = parseHeaderDump(await readFile(headersFile, "utf8").catch(() => ""));
  return { events, killedMidStream, status, headers };
}

// The output stage's STAGE_SUCCEEDED already carries the state SUCCEEDED; JOB_SUCCEEDED comes after it, last.
const isSucceeded = (e: StreamedEvent) => e.type === "JOB_EVENT_TYPE_JOB_SUCCEEDED";

t.test("walkthrough - login, pipeline, PDF upload, SSE resumed after drops until SUCCEEDED, NDJSON, download", async (t) => {
  const admin = await gateway.mesh.auth!.userFor("admin");
  const login = await curlJson("/v1/auth:login", { body: { email: admin.email, password: admin.password, tenant: admin.tenant } });
  const token = login.accessToken as string;
  t.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, "login answers an access token (a JWT)");
  const auth = ["-H", `authorization: Bearer ${token}`];

  // The README's invoices pipeline: every stage, PII redaction on, the text in the result.
  const pipeline = await curlJson("/v1/pipelines?pipelineId=walkthrough", {
    token,
    body: {
      displayName: "Walkthrough",
      config: {
        stages: [
          { stage: "STAGE_INGEST" }, { stage: "STAGE_DETECT" }, { stage: "STAGE_PARSE" },
          { stage: "STAGE_ENRICH", options: { enrich: { detectPii: true, redactPii: true } } },
          { stage: "STAGE_OUTPUT", options: { output: { includeText: true } } },
        ],
      },
    },
  });
  t.equal((pipeline.pipeline as { name?: string } | undefined)?.name ?? pipeline.name, "pipelines/walkthrough", "the pipeline is created");

  const marker = `Invoice number ${randomUUID().slice(0, 8)}`;
  const pdf = await makePdf([`${PROSE} ${marker}.`, PROSE]);
  const pdfFile = join(dir, "report.pdf");
  await writeFile(pdfFile, pdf);
  const uploaded = await curl("/v1/uploads?filename=report.pdf", [...auth, "-H", "content-type: application/pdf", "--data-binary", `@${pdfFile}`]);
  t.equal(uploaded.status, 200, `the PDF is uploaded as a raw body (${uploaded.body.toString("utf8").slice(0, 300)})`);
  const upload = (JSON.parse(uploaded.body.toString("utf8")) as { upload: { name: string; sizeBytes: string } }).upload;
  t.match(upload.name, /^uploads\/[a-z0-9-]+$/, "the answer names the upload");
  t.equal(upload.sizeBytes, String(pdf.byteLength), "every byte of the PDF arrived (int64 as a JSON string)");

  // No worker until the first watch has dropped: the job waits, queued, and its stream stays open.
  const mesh = gateway.mesh;
  await Promise.all(mesh.workers.map((w) => w.stop(1000)));
  mesh.workers.length = 0;
  const created = await curlJson("/v1/jobs", { token, body: { pipeline: "pipelines/walkthrough", document: { upload: upload.name } } });
  const job = created.job as { name: string; state: string };
  t.match(job.name, /^jobs\/[a-z0-9-]+$/, "CreateJob answers the job's name");
  const watchPath = `/v1/${job.name}:watch`;

  // Watch while the job waits for a worker, take its first event, drop the connection; then let
  // the job run and resume from the last id seen, dropping again after two events each time, until SUCCEEDED.
  const sse = ["-H", "accept: text/event-stream"];
  const first = await streamWithCurl(watchPath, [...auth, ...sse], takeSseEvents, (events) => events.length >= 1);
  t.equal(first.status, 200, "the watch answers 200");
  t.match(first.headers.get("content-type") ?? "", /^text\/event-stream/, "as Server-Sent Events");
  t.equal(first.events.length, 1, "the first watch took one event");
  t.ok(first.killedMidStream, "and was killed mid-stream (the job cannot have ended: no worker yet)");
  mesh.workers.push(await startWorkers(mesh.infra));
  const seen = [...first.events];
  let drops = first.killedMidStream ? 1 : 0;
  for (let connection = 0; !seen.some(isSucceeded) && connection < 50; connection++) {
    const last = seen.at(-1);
    t.ok(last?.id, "every event carries an SSE id to resume from");
    const resumed = await streamWithCurl(watchPath, [...auth, ...sse, "-H", `Last-Event-ID: ${last!.id}`], takeSseEvents, (events) => events.length >= 2 || events.some(isSucceeded));
    t.equal(resumed.status, 200, `resuming after id ${last!.id} answers 200`);
    if (resumed.events.length === 0) throw new Error(`resuming after id ${last!.id} streamed nothing, and the job has not succeeded`);
    if (resumed.events.some((e) => e.state === "JOB_STATE_FAILED")) throw new Error(`the job failed: ${JSON.stringify(resumed.events)}`);
    if (resumed.killedMidStream) drops++;
    seen.push(...resumed.events);
  }
  t.comment(`${seen.length} events over ${drops} dropped connections`);
  t.ok(drops >= 1, `the watch was dropped mid-stream and resumed (${drops} drops)`);
  t.ok(seen.some(isSucceeded), "the job's SUCCEEDED event arrived");
  t.equal(seen[0].sequence, 1, "the first watch starts at the job's first event");
  const gaps = seen.slice(1).filter((e, i) => e.sequence !== seen[i].sequence + 1).map((e) => e.sequence);
  t.same(gaps, [], `sequences rise by exactly one across every resume: no gap, no repeat (${seen.map((e) => e.sequence).join(",")})`);
  t.same(seen.filter((e) => e.id !== String(e.sequence)), [], "each SSE id is the event's sequence");
  t.equal(new Set(seen.map((e) => e.eventId)).size, seen.length, "no event id repeats");
  t.equal(seen.at(-1)!.type, "JOB_EVENT_TYPE_JOB_SUCCEEDED", "SUCCEEDED is the last event");

  // The same events as NDJSON, in one connection: the job has ended, so the stream ends too.
  const ndjson = await streamWithCurl(watchPath, [...auth, "-H", "accept: application/x-ndjson"], takeNdjsonEvents, (events) => events.some(isSucceeded));
  t.equal(ndjson.status, 200, "the NDJSON watch answers 200");
  t.match(ndjson.headers.get("content-type") ?? "", /^application\/x-ndjson/, "as NDJSON");
  const summary = (events: StreamedEvent[]) => events.map((e) => `${e.sequence} ${e.type} ${e.state} ${e.eventId}`);
  t.same(summary(ndjson.events), summary(seen), "NDJSON carries the same events as the resumed SSE streams");

  const result = (await curlJson(`/v1/${job.name}/result`, { token })) as { result?: { name: string; text: string } };
  t.match(result.result?.text, marker, "GetJobResult has the PDF's text");

  const download = await curl(`/v1/${job.name}/result:download`, auth);
  t.equal(download.status, 200, "the result downloads");
  t.match(download.headers.get("content-type") ?? "", /^application\/json/, "the JSON result comes as application/json");
  t.equal(download.headers.get("content-length"), String(download.body.byteLength), "Content-Length is the number of bytes received");
  const downloaded = JSON.parse(download.body.toString("utf8")) as { name: string; text: string };
  t.equal(downloaded.name, `${job.name}/result`, "the download is the job's result");
  t.equal(downloaded.text, result.result?.text, "with the text GetJobResult has");

  const text = await curl(`/v1/${job.name}/result:download?format=RESULT_FORMAT_TEXT`, auth);
  t.equal(text.status, 200, "the text alone downloads");
  t.match(text.headers.get("content-type") ?? "", /^text\/plain/, "as text/plain");
  t.equal(text.headers.get("content-length"), String(text.body.byteLength), "Content-Length is the number of bytes received");
  t.equal(text.body.toString("utf8"), result.result?.text, "the bytes are the result's text");
});

import assert from "node:assert/strict";
import { create, toJson, type Message } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
// @deno-types="../../gen/grpc/health/v1/health_pb.d.ts"
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
// @deno-types="../../gen/jobmesh/v1/events_pb.d.ts"
import { JobEventSchema, JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
// @deno-types="../../gen/jobmesh/v1/jobs_pb.d.ts"
import { JobService, WatchJobRequestSchema, WatchJobResponseSchema } from "../../gen/jobmesh/v1/jobs_pb.js";
import { applyResume, resumeFieldOf, serverStreamResponse, wantsNdjson, type ServerStreamOptions } from "./server-stream.ts";

const watchJob = JobService.method.watchJob;

function request(headers: Record<string, string> = {}, query = ""): Request {
  return new Request(`http://gateway.test/v1/jobs/j1:watch${query}`, { headers });
}

function event(sequence: number): Message {
  return create(WatchJobResponseSchema, {
    event: create(JobEventSchema, { eventId: `e${sequence}`, job: "jobs/j1", type: JobEventType.STAGE_STARTED, sequence: BigInt(sequence) }),
  });
}

async function* events(...sequences: number[]): AsyncGenerator<Message> {
  for (const sequence of sequences) yield event(sequence);
}

const notFoundBody = { code: 5, message: "job jobs/j1 not found", details: [] };

function options(overrides: Partial<ServerStreamOptions>): ServerStreamOptions {
  return {
    req: request(),
    method: watchJob,
    messages: events(),
    heartbeatMs: 60_000,
    abort: new AbortController(),
    toJson: (message) => toJson(WatchJobResponseSchema, message as never),
    statusOf: () => ({ status: 404, body: notFoundBody }),
    ...overrides,
  };
}

/** Reads the body until `done(text so far)` holds or the stream ends. */
async function readUntil(body: ReadableStream<Uint8Array>, done: (text: string) => boolean): Promise<{ text: string; reader: ReadableStreamDefaultReader<Uint8Array> }> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  while (!done(text)) {
    const next = await reader.read();
    if (next.done) break;
    text += decoder.decode(next.value, { stream: true });
  }
  return { text, reader };
}

Deno.test("server-stream - SSE is the default; NDJSON only when Accept prefers it", () => {
  assert.equal(wantsNdjson(request()), false);
  assert.equal(wantsNdjson(request({ accept: "*/*" })), false);
  assert.equal(wantsNdjson(request({ accept: "text/event-stream" })), false);
  assert.equal(wantsNdjson(request({ accept: "application/x-ndjson" })), true);
  assert.equal(wantsNdjson(request({ accept: "application/json, application/x-ndjson" })), true);
  assert.equal(wantsNdjson(request({ accept: "application/x-ndjson;q=0" })), false);
  assert.equal(wantsNdjson(request({ accept: "application/x-ndjson;q=0.5, text/event-stream" })), false);
  assert.equal(wantsNdjson(request({ accept: "text/event-stream;q=0.2, Application/X-NDJSON" })), true);
});

Deno.test("server-stream - resumeFieldOf reads WatchJob's after_sequence and event.sequence from the descriptors", () => {
  assert.deepEqual(resumeFieldOf(watchJob), { requestField: "after_sequence", responsePath: ["event", "sequence"] });
  // Streams without a sequence, and a unary method, cannot resume.
  assert.equal(resumeFieldOf(JobService.method.downloadJobResult), undefined);
  assert.equal(resumeFieldOf(Health.method.watch), undefined);
  assert.equal(resumeFieldOf(JobService.method.getJob), undefined);
});

Deno.test("server-stream - Last-Event-ID (or ?lastEventId) becomes after_sequence when it is further along", () => {
  const fromHeader = create(WatchJobRequestSchema, { name: "jobs/j1" });
  applyResume(request({ "last-event-id": "7" }), watchJob, fromHeader);
  assert.equal(fromHeader.afterSequence, 7n);

  const fromQuery = create(WatchJobRequestSchema, { name: "jobs/j1" });
  applyResume(request({}, "?lastEventId=5"), watchJob, fromQuery);
  assert.equal(fromQuery.afterSequence, 5n);

  const header = create(WatchJobRequestSchema, { name: "jobs/j1" });
  applyResume(request({ "last-event-id": "9" }, "?lastEventId=3"), watchJob, header);
  assert.equal(header.afterSequence, 9n, "the header (the reconnect's own) wins over the URL's");

  const ahead = create(WatchJobRequestSchema, { name: "jobs/j1", afterSequence: 10n });
  applyResume(request({ "last-event-id": "4" }), watchJob, ahead);
  assert.equal(ahead.afterSequence, 10n, "never moves back");

  const untouched = create(WatchJobRequestSchema, { name: "jobs/j1", afterSequence: 2n });
  applyResume(request(), watchJob, untouched);
  assert.equal(untouched.afterSequence, 2n);
});

Deno.test("server-stream - a Last-Event-ID that is not a sequence is INVALID_ARGUMENT naming the header", () => {
  for (const bad of ["abc", "-1", "1.5", "99999999999999999999", "9223372036854775808"]) {
    const input = create(WatchJobRequestSchema, { name: "jobs/j1" });
    assert.throws(
      () => applyResume(request({ "last-event-id": bad }), watchJob, input),
      (error: unknown) => error instanceof ConnectError && error.code === Code.InvalidArgument && error.rawMessage.includes("Last-Event-ID"),
      bad,
    );
  }
  assert.throws(
    () => applyResume(request({}, "?lastEventId=x"), watchJob, create(WatchJobRequestSchema, { name: "jobs/j1" })),
    (error: unknown) => error instanceof ConnectError && error.code === Code.InvalidArgument && error.rawMessage.includes("lastEventId"),
  );
  // A stream that cannot resume ignores the header.
  applyResume(request({ "last-event-id": "abc" }), Health.method.watch, create(Health.method.watch.input));
});

Deno.test("server-stream - SSE: id is the event sequence, one data line of proto3 JSON, an end event, the streaming headers", async () => {
  const response = serverStreamResponse(options({ messages: events(1, 2) }));
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "text/event-stream");
  assert.equal(response.headers.get("cache-control"), "no-cache");
  assert.equal(response.headers.get("x-accel-buffering"), "no");
  const text = await response.text();
  const frames = text.split("\n\n").filter(Boolean);
  assert.equal(frames.length, 3, text);
  for (const [index, frame] of frames.slice(0, 2).entries()) {
    const lines = frame.split("\n");
    assert.equal(lines[0], `id: ${index + 1}`);
    assert.equal(lines[1], "event: message");
    assert.ok(lines[2]!.startsWith("data: "));
    assert.equal(lines.length, 3);
    const data = JSON.parse(lines[2]!.slice("data: ".length));
    assert.equal(data.event.sequence, String(index + 1), "int64 as a string");
    assert.equal(data.event.type, "JOB_EVENT_TYPE_STAGE_STARTED", "enums by name");
    assert.equal(data.event.eventId, `e${index + 1}`, "camelCase");
  }
  assert.equal(frames[2], "event: end\ndata: {}");
});

Deno.test("server-stream - SSE: a keep-alive comment while the backend is idle, then the event", async () => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  async function* slow(): AsyncGenerator<Message> {
    yield event(1);
    await released;
    yield event(2);
  }
  const response = serverStreamResponse(options({ messages: slow(), heartbeatMs: 5 }));
  const { text: before, reader } = await readUntil(response.body!, (text) => text.includes(": keep-alive\n\n"));
  assert.match(before, /^id: 1\n.*\n\n(: keep-alive\n\n)+$/s);
  release();
  let after = "";
  for (let next = await reader.read(); !next.done; next = await reader.read()) after += new TextDecoder().decode(next.value);
  assert.match(after, /id: 2\nevent: message\n/);
  assert.ok(after.endsWith("event: end\ndata: {}\n\n"));
});

Deno.test("server-stream - SSE: a failure mid-stream ends with an error event carrying the Status", async () => {
  async function* failing(): AsyncGenerator<Message> {
    yield event(1);
    throw new ConnectError("job jobs/j1 not found", Code.NotFound);
  }
  const seen: unknown[] = [];
  const response = serverStreamResponse(options({ messages: failing(), statusOf: (error) => (seen.push(error), { status: 404, body: notFoundBody }) }));
  const frames = (await response.text()).split("\n\n").filter(Boolean);
  assert.equal(frames.length, 2);
  assert.equal(frames[1], `event: error\ndata: ${JSON.stringify(notFoundBody)}`);
  assert.ok(seen[0] instanceof ConnectError && seen[0].code === Code.NotFound, "statusOf sees the backend's error");
});

Deno.test("server-stream - NDJSON: one {result} per line, {error} on failure, no heartbeat", async () => {
  async function* failing(): AsyncGenerator<Message> {
    yield event(1);
    yield event(2);
    throw new ConnectError("gone", Code.NotFound);
  }
  const response = serverStreamResponse(options({ req: request({ accept: "application/x-ndjson" }), messages: failing(), heartbeatMs: 1 }));
  assert.equal(response.headers.get("content-type"), "application/x-ndjson");
  const text = await response.text();
  assert.ok(text.endsWith("\n"));
  const lines = text.trimEnd().split("\n").map((line) => JSON.parse(line));
  assert.equal(lines.length, 3, text);
  assert.deepEqual(lines.slice(0, 2).map((line) => line.result.event.sequence), ["1", "2"]);
  assert.deepEqual(lines[2], { error: notFoundBody });
});

Deno.test("server-stream - a client that goes away aborts the backend call", async () => {
  const abort = new AbortController();
  let stopped = false;
  async function* endless(): AsyncGenerator<Message> {
    try {
      yield event(1);
      // Like a Connect stream: waits for the next event until its signal aborts.
      await new Promise((_, reject) => abort.signal.addEventListener("abort", () => reject(abort.signal.reason), { once: true }));
    } finally {
      stopped = true;
    }
  }
  const response = serverStreamResponse(options({ messages: endless(), abort }));
  const { reader } = await readUntil(response.body!, (text) => text.includes("id: 1"));
  assert.equal(abort.signal.aborted, false);
  await reader.cancel();
  assert.equal(abort.signal.aborted, true);
  const deadline = Date.now() + 10_000;
  while (!stopped && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(stopped, true, "the backend stream was released");
});

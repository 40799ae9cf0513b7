import assert from "node:assert/strict";
import { createGatewayLog, createLineBatcher, logRequest } from "./observability.ts";

const nextTurn = () => new Promise((resolve) => setTimeout(resolve, 0));

/** Polls until `check` holds (a turn of the event loop is not a fixed time on a busy machine). */
async function eventually(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!check()) {
    if (Date.now() > deadline) assert.fail(`never: ${what}`);
    await nextTurn();
  }
}

Deno.test("line batcher - the lines of one turn are written together, in order, after it", async () => {
  const chunks: string[] = [];
  const batcher = createLineBatcher((text) => chunks.push(text));
  batcher.write("a");
  batcher.write("b");
  batcher.write("c");
  assert.deepEqual(chunks, [], "nothing is written during the turn");
  await eventually(() => chunks.length > 0, "the turn's lines written");
  assert.deepEqual(chunks, ["a\nb\nc"]);
  batcher.write("d");
  await eventually(() => chunks.length > 1, "the next turn's line written");
  assert.deepEqual(chunks, ["a\nb\nc", "d"]);
});

Deno.test("line batcher - flush writes what is queued at once, and a full batch does not wait", () => {
  const chunks: string[] = [];
  const batcher = createLineBatcher((text) => chunks.push(text), 3);
  batcher.write("1");
  batcher.flush();
  assert.deepEqual(chunks, ["1"]);
  batcher.flush();
  assert.deepEqual(chunks, ["1"], "nothing queued, nothing written");
  for (const line of ["2", "3", "4"]) batcher.write(line);
  assert.deepEqual(chunks, ["1", "2\n3\n4"], "maxLines lines are written without waiting for the turn");
  batcher.write("5");
  batcher.flush();
  assert.deepEqual(chunks, ["1", "2\n3\n4", "5"]);
});

Deno.test("access log - one JSON line per request in the services' shape, through a batcher unchanged", async () => {
  const direct: string[] = [];
  const chunks: string[] = [];
  const batcher = createLineBatcher((text) => chunks.push(text));
  const record = { method: "GET", route: "/v1/{name=pipelines/*}", status: 200, durationMs: 1.23456, requestId: "r1", tenant: "t1" };
  logRequest(createGatewayLog("info", (line) => direct.push(line)), record);
  logRequest(createGatewayLog("info", batcher.write), record);
  batcher.flush();
  assert.equal(direct.length, 1);
  const line = JSON.parse(direct[0]!) as Record<string, unknown>;
  assert.deepEqual(Object.keys(line), ["level", "time", "name", "msg", "method", "route", "status", "durationMs", "requestId", "tenant"]);
  assert.deepEqual({ ...line, time: undefined }, { level: "info", time: undefined, name: "gateway", msg: "request", method: "GET", route: "/v1/{name=pipelines/*}", status: 200, durationMs: 1.23, requestId: "r1", tenant: "t1" });
  const batched = JSON.parse(chunks[0]!) as Record<string, unknown>;
  assert.deepEqual({ ...batched, time: line.time }, line);

  const quiet: string[] = [];
  logRequest(createGatewayLog("warn", (l) => quiet.push(l)), record);
  assert.deepEqual(quiet, [], "no access log above info");
});

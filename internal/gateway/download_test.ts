import assert from "node:assert/strict";
import { create, type Message } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
// @deno-types="../../gen/jobmesh/v1/jobs_pb.d.ts"
import { DownloadJobResultResponseSchema, JobService } from "../../gen/jobmesh/v1/jobs_pb.js";
import { downloadResponse, isDownloadMethod } from "./download.ts";

const encoder = new TextEncoder();

/** The messages of a `total`-byte result cut into `pieces`, media type in the first only (as the service sends them). */
function chunks(pieces: string[], mediaType: string, total = pieces.join("").length): Message[] {
  let offset = 0;
  return pieces.map((piece, index) => {
    const message = create(DownloadJobResultResponseSchema, { chunk: encoder.encode(piece), offset: BigInt(offset), totalSize: BigInt(total), mediaType: index === 0 ? mediaType : "" });
    offset += piece.length;
    return message;
  });
}

async function* stream(messages: Message[], failure?: Error): AsyncGenerator<Message> {
  for (const message of messages) yield message;
  if (failure) throw failure;
}

Deno.test("download - isDownloadMethod picks DownloadJobResult by its chunk/total_size/media_type shape", () => {
  assert.equal(isDownloadMethod(JobService.method.downloadJobResult), true);
  assert.equal(isDownloadMethod(JobService.method.watchJob), false);
  assert.equal(isDownloadMethod(JobService.method.uploadDocument), false);
  assert.equal(isDownloadMethod(JobService.method.getJobResult), false);
});

Deno.test("download - media type, length and disposition from the first chunk; the bytes in order", async () => {
  const response = await downloadResponse(stream(chunks(["hello ", "streamed ", "world"], "application/json")), new AbortController());
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "application/json");
  assert.equal(response.headers.get("content-length"), "20");
  assert.equal(response.headers.get("content-disposition"), "attachment");
  assert.equal(response.headers.get("x-content-type-options"), "nosniff");
  assert.equal(await response.text(), "hello streamed world");
});

Deno.test("download - an empty or unusable media type is sent as application/octet-stream", async () => {
  for (const mediaType of ["", "text/html\r\nset-cookie: a=b", "not a type"]) {
    const response = await downloadResponse(stream(chunks(["x"], mediaType)), new AbortController());
    assert.equal(response.headers.get("content-type"), "application/octet-stream", JSON.stringify(mediaType));
    await response.body?.cancel();
  }
});

Deno.test("download - a resumed download announces only the bytes still to come", async () => {
  const resumed = create(DownloadJobResultResponseSchema, { chunk: encoder.encode("world"), offset: 15n, totalSize: 20n, mediaType: "text/plain" });
  const response = await downloadResponse(stream([resumed]), new AbortController());
  assert.equal(response.headers.get("content-length"), "5");
  assert.equal(await response.text(), "world");
});

Deno.test("download - a failure before the first chunk is thrown, for a proper error response", async () => {
  const notFound = new ConnectError("result not found", Code.NotFound);
  await assert.rejects(downloadResponse(stream([], notFound), new AbortController()), (error: unknown) => error === notFound);
});

Deno.test("download - a failure or a short stream after the first chunk errors the body", async () => {
  const failed = await downloadResponse(stream(chunks(["hello "], "text/plain", 20), new ConnectError("lost", Code.Unavailable)), new AbortController());
  await assert.rejects(failed.arrayBuffer());
  const short = await downloadResponse(stream(chunks(["hello ", "world"], "text/plain", 20)), new AbortController());
  await assert.rejects(short.arrayBuffer(), /ended after 11 of 20 bytes/);
  const long = await downloadResponse(stream(chunks(["hello ", "world"], "text/plain", 8)), new AbortController());
  await assert.rejects(long.arrayBuffer(), /sent 11 bytes of 8/);
});

Deno.test("download - over HTTP the client sees the length and a truncated transfer, never a short file that looks whole", async () => {
  let failLater = false;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async () => {
    const messages = chunks(["a".repeat(64 * 1024), "b".repeat(64 * 1024)], "application/pdf", 256 * 1024);
    return await downloadResponse(stream(failLater ? messages.slice(0, 1) : messages, failLater ? new ConnectError("lost", Code.Unavailable) : undefined), new AbortController());
  });
  try {
    const url = `http://127.0.0.1:${server.addr.port}/`;
    const truncated = await fetch(url);
    assert.equal(truncated.headers.get("content-length"), String(256 * 1024));
    assert.equal(truncated.headers.get("content-type"), "application/pdf");
    await assert.rejects(truncated.arrayBuffer(), "128 KiB of an announced 256 KiB must not read as complete");
    failLater = true;
    const failed = await fetch(url);
    await assert.rejects(failed.arrayBuffer(), "a backend failure mid-body must not read as complete");
  } finally {
    await server.shutdown();
  }
});

Deno.test("download - a client that goes away aborts the backend call", async () => {
  const abort = new AbortController();
  async function* endless(): AsyncGenerator<Message> {
    yield chunks(["first"], "text/plain", 100)[0]!;
    await new Promise((_, reject) => abort.signal.addEventListener("abort", () => reject(abort.signal.reason), { once: true }));
  }
  const response = await downloadResponse(endless(), abort);
  const reader = response.body!.getReader();
  assert.equal(new TextDecoder().decode((await reader.read()).value), "first");
  assert.equal(abort.signal.aborted, false);
  await reader.cancel();
  assert.equal(abort.signal.aborted, true);
});

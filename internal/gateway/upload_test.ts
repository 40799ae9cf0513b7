import assert from "node:assert/strict";
import { create, type DescMethodStreaming, type Message } from "@bufbuild/protobuf";
import { Code, ConnectError, createConnectRouter } from "@connectrpc/connect";
import { createFetchClient, createFetchHandler } from "@connectrpc/connect/protocol";
import { createTransport } from "@connectrpc/connect/protocol-connect";
import { parseMultipart } from "@remix-run/multipart-parser";
// @deno-types="../../gen/jobmesh/v1/jobs_pb.d.ts"
import { JobService, UploadDocumentResponseSchema, type UploadDocumentRequest, type UploadMetadata } from "../../gen/jobmesh/v1/jobs_pb.js";
import { BodyTooLargeError } from "./http-errors.ts";
import { isUploadMethod, uploadMessages } from "./upload.ts";

const uploadDocument = JobService.method.uploadDocument;
const MiB = 1024 * 1024;
const encoder = new TextEncoder();

/** Bytes that differ from chunk to chunk, so a reordering or a lost piece shows. */
function document(length: number): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = (i * 7 + (i >> 12)) & 0xff;
  return bytes;
}

function join(parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const joined = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    joined.set(part, offset);
    offset += part.length;
  }
  return joined;
}

/**
 * A request body handed out in `pieces`; every piece after the first waits for `gate`, so a test
 * can see what comes out of the upload while the body is still arriving.
 */
function gatedBody(pieces: Uint8Array[]): { body: ReadableStream<Uint8Array>; open(): void; ended(): boolean } {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  let index = 0;
  let ended = false;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (index > 0) await gate;
      if (index === pieces.length) {
        ended = true;
        return controller.close();
      }
      controller.enqueue(pieces[index++]!);
    },
  }, { highWaterMark: 0 });
  return { body, open, ended: () => ended };
}

function slices(bytes: Uint8Array<ArrayBuffer>, size: number): Uint8Array<ArrayBuffer>[] {
  const pieces: Uint8Array<ArrayBuffer>[] = [];
  for (let at = 0; at < bytes.length; at += size) pieces.push(bytes.subarray(at, at + size));
  return pieces;
}

function uploadRequest(body: BodyInit | null, headers: Record<string, string> = {}, query = ""): Request {
  return new Request(`http://gateway.test/v1/uploads${query}`, { method: "POST", body, headers });
}

function metadataOf(message: Message | undefined): UploadMetadata {
  const part = (message as UploadDocumentRequest).part;
  assert.equal(part.case, "metadata", "the first message carries the metadata");
  return part.value as UploadMetadata;
}

function chunkOf(message: Message): Uint8Array {
  const part = (message as UploadDocumentRequest).part;
  assert.equal(part.case, "chunk", "every later message carries bytes");
  return part.value as Uint8Array;
}

async function collect(messages: AsyncIterable<Message>): Promise<{ metadata: UploadMetadata; chunks: Uint8Array[] }> {
  const all: Message[] = [];
  for await (const message of messages) all.push(message);
  return { metadata: metadataOf(all[0]), chunks: all.slice(1).map(chunkOf) };
}

function assertChunksWellCut(chunks: Uint8Array[]): void {
  for (const chunk of chunks) {
    assert.ok(chunk.length > 0, "never an empty chunk");
    assert.ok(chunk.length <= MiB, `chunk of ${chunk.length} bytes is over 1 MiB`);
  }
}

/** A multipart/form-data body as a browser builds it, with the boundary given. */
function form(boundary: string, parts: { name: string; filename?: string; type?: string; content: Uint8Array | string }[]): Uint8Array<ArrayBuffer> {
  const pieces: Uint8Array[] = [];
  for (const part of parts) {
    const disposition = `form-data; name="${part.name}"${part.filename === undefined ? "" : `; filename="${part.filename}"`}`;
    const headers = `--${boundary}\r\nContent-Disposition: ${disposition}\r\n${part.type ? `Content-Type: ${part.type}\r\n` : ""}\r\n`;
    pieces.push(encoder.encode(headers), typeof part.content === "string" ? encoder.encode(part.content) : part.content, encoder.encode("\r\n"));
  }
  pieces.push(encoder.encode(`--${boundary}--\r\n`));
  return join(pieces);
}

const isTooLarge = (error: unknown) => error instanceof BodyTooLargeError && error.limitBytes === 2 * MiB;
const isInvalid = (pattern: RegExp) => (error: unknown) => error instanceof ConnectError && error.code === Code.InvalidArgument && pattern.test(error.rawMessage);

Deno.test("upload - isUploadMethod picks UploadDocument by its metadata/chunk oneof", () => {
  assert.equal(isUploadMethod(uploadDocument), true);
  assert.equal(isUploadMethod(JobService.method.createJob), false);
  assert.equal(isUploadMethod(JobService.method.downloadJobResult), false);
});

Deno.test("upload - raw body: 3 MiB arrives as ≥3 chunks of at most 1 MiB, the first before the body ends", async () => {
  const bytes = document(3 * MiB + 123);
  const source = gatedBody(slices(bytes, MiB));
  const messages = uploadMessages(uploadRequest(source.body, { "content-type": "application/pdf" }), uploadDocument, 50 * MiB)[Symbol.asyncIterator]();
  const metadata = metadataOf((await messages.next()).value);
  assert.equal(metadata.mediaType, "application/pdf");
  const first = chunkOf((await messages.next()).value);
  assert.equal(source.ended(), false, "the first chunk went out while the body was still arriving");
  assert.equal(first.length, MiB);
  source.open();
  const chunks = [first];
  for (let next = await messages.next(); !next.done; next = await messages.next()) chunks.push(chunkOf(next.value));
  assert.ok(chunks.length >= 3, `${chunks.length} chunks`);
  assertChunksWellCut(chunks);
  assert.deepEqual(join(chunks), bytes);
});

Deno.test("upload - raw body: small network pieces are gathered, large ones cut", async () => {
  const bytes = document(2 * MiB + 10);
  const { chunks } = await collect(uploadMessages(uploadRequest(new Blob(slices(bytes, 1000)).stream()), uploadDocument, 50 * MiB));
  assertChunksWellCut(chunks);
  assert.ok(chunks.length <= 40, `${chunks.length} chunks for 2 MiB: small pieces were not gathered`);
  assert.deepEqual(join(chunks), bytes);
});

Deno.test("upload - raw body: filename, media type, size and sha256 from the headers and query", async () => {
  const digest = new Uint8Array(32).fill(0xab);
  const base64 = btoa(String.fromCharCode(...digest));
  const hex = "ab".repeat(32);
  const headers = {
    "content-type": "Application/PDF; charset=binary",
    "content-disposition": `attachment; filename="/home/me/report 2026.pdf"`,
    "content-length": "5",
    "content-digest": `sha-512=:${btoa("x".repeat(64))}:, sha-256=:${base64}:`,
  };
  const { metadata, chunks } = await collect(uploadMessages(uploadRequest("hello", headers), uploadDocument, 50 * MiB));
  assert.equal(metadata.filename, "report 2026.pdf", "the client's path is dropped");
  assert.equal(metadata.mediaType, "application/pdf");
  assert.equal(metadata.sizeBytes, 5n);
  assert.equal(metadata.sha256, hex);
  assert.deepEqual(join(chunks), encoder.encode("hello"));

  // A quoted-string escapes each backslash; a Windows path still loses its directories.
  const windows = await collect(uploadMessages(uploadRequest("hi", { "content-disposition": `attachment; filename="C:\\\\Users\\\\me\\\\cv.docx"` }), uploadDocument, MiB));
  assert.equal(windows.metadata.filename, "cv.docx");

  const encoded = await collect(uploadMessages(uploadRequest("hi", { "content-disposition": "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.txt", "repr-digest": `sha-256=:${base64}:` }), uploadDocument, MiB));
  assert.equal(encoded.metadata.filename, "résumé.txt");
  assert.equal(encoded.metadata.sha256, hex);

  const query = await collect(uploadMessages(uploadRequest("hi", { "content-type": "application/x-www-form-urlencoded" }, `?filename=notes.md&sha256=${hex.toUpperCase()}`), uploadDocument, MiB));
  assert.equal(query.metadata.filename, "notes.md");
  assert.equal(query.metadata.sha256, hex);
  assert.equal(query.metadata.mediaType, "", "curl's --data-binary default names no document type");
});

Deno.test("upload - a malformed digest header is INVALID_ARGUMENT naming it", () => {
  for (const value of ["sha-256=abc", "sha-256=:AAAA:", "sha-256=:!!!:"]) {
    assert.throws(() => uploadMessages(uploadRequest("x", { "content-digest": value }), uploadDocument, MiB), isInvalid(/content-digest/), value);
  }
});

Deno.test("upload - 413 up front from Content-Length, before any message", () => {
  assert.throws(() => uploadMessages(uploadRequest("x", { "content-length": String(2 * MiB + 1) }), uploadDocument, 2 * MiB), isTooLarge);
  const boundary = "b0undary";
  assert.throws(() => uploadMessages(uploadRequest("x", { "content-type": `multipart/form-data; boundary=${boundary}`, "content-length": String(3 * MiB) }), uploadDocument, 2 * MiB), isTooLarge);
});

Deno.test("upload - 413 while counting when no length was declared", async () => {
  const raw = uploadMessages(uploadRequest(new Blob([document(2 * MiB + 1)]).stream()), uploadDocument, 2 * MiB);
  await assert.rejects(collect(raw), isTooLarge);
  const boundary = "b0undary";
  const body = form(boundary, [{ name: "file", filename: "big.bin", content: document(2 * MiB + 1) }]);
  const multipart = uploadMessages(uploadRequest(new Blob([body]).stream(), { "content-type": `multipart/form-data; boundary=${boundary}` }), uploadDocument, 2 * MiB);
  await assert.rejects(collect(multipart), isTooLarge);
});

Deno.test("upload - multipart: the file part streams (first chunk before the body ends), sha256 field, part headers", async () => {
  const boundary = "----WebKitFormBoundary7MA4YWxkTrZu0gW";
  const bytes = document(3 * MiB + 77);
  const sha256 = "0f".repeat(32);
  const body = form(boundary, [{ name: "sha256", content: sha256.toUpperCase() }, { name: "document", filename: "scan.pdf", type: "application/pdf", content: bytes }]);
  // Odd piece sizes put the boundary across pieces.
  const source = gatedBody(slices(body, 777_777));
  const messages = uploadMessages(uploadRequest(source.body, { "content-type": `multipart/form-data; boundary=${boundary}` }), uploadDocument, 50 * MiB)[Symbol.asyncIterator]();
  const metadata = metadataOf((await messages.next()).value);
  assert.equal(metadata.filename, "scan.pdf");
  assert.equal(metadata.mediaType, "application/pdf");
  assert.equal(metadata.sha256, sha256);
  assert.equal(metadata.sizeBytes, 0n, "a form does not tell the file's size");
  const first = chunkOf((await messages.next()).value);
  assert.equal(source.ended(), false, "the first chunk went out while the body was still arriving");
  source.open();
  const chunks = [first];
  for (let next = await messages.next(); !next.done; next = await messages.next()) chunks.push(chunkOf(next.value));
  assert.ok(chunks.length >= 3, `${chunks.length} chunks`);
  assertChunksWellCut(chunks);
  assert.deepEqual(join(chunks), bytes);
});

Deno.test("upload - multipart: a boundary split at every byte, and look-alike bytes in the file, parse as the library parses them", async () => {
  const boundary = "xYz";
  const tricky = encoder.encode(`a\r\n--xY\r\n-\r\n--x\r\n--xYZ\r\r\n--xY z\r\n--`);
  const body = form(boundary, [{ name: "sha256", content: "" }, { name: "f", filename: "t.bin", content: tricky }]);
  const parts = [...parseMultipart(body, { boundary })];
  const expected = parts.find((part) => part.isFile)!.bytes;
  assert.deepEqual(expected, tricky, "the library reads the file as written");
  const { metadata, chunks } = await collect(uploadMessages(uploadRequest(new Blob(slices(body, 1)).stream(), { "content-type": `multipart/form-data; boundary="${boundary}"` }), uploadDocument, MiB));
  assert.equal(metadata.filename, "t.bin");
  assertChunksWellCut(chunks);
  assert.deepEqual(join(chunks), expected);
});

Deno.test("upload - multipart: a FormData body as fetch encodes it", async () => {
  const data = new FormData();
  data.set("sha256", "ab".repeat(32));
  data.set("file", new File([document(100_000)], "data.csv", { type: "text/csv" }));
  const encoded = new Response(data);
  const { metadata, chunks } = await collect(uploadMessages(uploadRequest(encoded.body, { "content-type": encoded.headers.get("content-type")! }), uploadDocument, MiB));
  assert.equal(metadata.filename, "data.csv");
  assert.equal(metadata.mediaType, "text/csv");
  assert.equal(metadata.sha256, "ab".repeat(32));
  assert.deepEqual(join(chunks), document(100_000));
});

Deno.test("upload - multipart: no file, an unknown field, a field after the file, no boundary are INVALID_ARGUMENT", async () => {
  const boundary = "bnd";
  const contentType = { "content-type": `multipart/form-data; boundary=${boundary}` };
  const cases: [Uint8Array<ArrayBuffer>, RegExp][] = [
    [form(boundary, [{ name: "sha256", content: "ab" }]), /no file part/],
    [form(boundary, [{ name: "title", content: "x" }, { name: "f", filename: "a.txt", content: "x" }]), /unknown form field "title"/],
    [form(boundary, [{ name: "f", filename: "a.txt", content: "x" }, { name: "sha256", content: "ab" }]), /last part/],
    [encoder.encode(`--${boundary}\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\nunterminated`), /ends inside a part/],
  ];
  for (const [body, pattern] of cases) {
    await assert.rejects(collect(uploadMessages(uploadRequest(body, contentType), uploadDocument, MiB)), isInvalid(pattern), String(pattern));
  }
  assert.throws(() => uploadMessages(uploadRequest("x", { "content-type": "multipart/form-data" }), uploadDocument, MiB), isInvalid(/boundary/));
});

Deno.test("upload - a backend that stops reading cancels the request body", async () => {
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    pull: (controller) => controller.enqueue(document(MiB)),
    cancel: () => {
      cancelled = true;
    },
  });
  const messages = uploadMessages(uploadRequest(body), uploadDocument, 50 * MiB)[Symbol.asyncIterator]();
  await messages.next();
  await messages.next();
  await messages.return?.(undefined);
  assert.equal(cancelled, true);
});

Deno.test("upload - sent with Connect over fetch, the stream arrives whole, and a 413 midway is kept in failure (fetch only says 'fetch failed')", async () => {
  const received: number[] = [];
  const router = createConnectRouter().service(JobService, {
    async uploadDocument(requests: AsyncIterable<UploadDocumentRequest>) {
      let bytes = 0;
      for await (const request of requests) if (request.part.case === "chunk") bytes += request.part.value.length;
      received.push(bytes);
      return create(UploadDocumentResponseSchema, {});
    },
  } as never);
  const handle = createFetchHandler(router.handlers.find((handler) => handler.method === uploadDocument)!);
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => handle(req));
  const transport = createTransport({
    httpClient: createFetchClient(fetch),
    baseUrl: `http://127.0.0.1:${server.addr.port}`,
    useBinaryFormat: true,
    interceptors: [],
    acceptCompression: [],
    sendCompression: null,
    compressMinBytes: Number.MAX_SAFE_INTEGER,
    readMaxBytes: 8 * MiB,
    writeMaxBytes: 8 * MiB,
  });
  const send = async (messages: AsyncIterable<Message>) => {
    const response = await transport.stream(uploadDocument as DescMethodStreaming, new AbortController().signal, undefined, undefined, messages, undefined);
    for await (const message of response.message) void message;
  };
  try {
    await send(uploadMessages(uploadRequest(new Blob([document(3 * MiB)]).stream()), uploadDocument, 4 * MiB));
    assert.deepEqual(received, [3 * MiB]);
    const tooLarge = uploadMessages(uploadRequest(new Blob([document(3 * MiB)]).stream()), uploadDocument, 2 * MiB);
    await assert.rejects(send(tooLarge), (error: unknown) => !(error instanceof BodyTooLargeError), "the transport loses the error itself");
    assert.ok(tooLarge.failure instanceof BodyTooLargeError, "but the stream kept it");
  } finally {
    await server.shutdown();
  }
});

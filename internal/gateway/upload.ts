/**
 * Uploads over plain HTTP: a raw body (`curl --data-binary @doc.pdf -H 'content-type:
 * application/pdf'`) or a multipart form (`curl -F file=@doc.pdf`, an HTML <form>) becomes the
 * UploadDocument request stream, metadata first and then the bytes, passed on as they arrive:
 * the gateway never holds more than about one chunk of a document, whatever its size.
 */
import { ScalarType, type DescField, type DescMessage, type DescMethod, type Message } from "@bufbuild/protobuf";
import { reflect } from "@bufbuild/protobuf/reflect";
import { Code, ConnectError } from "@connectrpc/connect";
import { getMultipartBoundary, MultipartPart } from "@remix-run/multipart-parser";
import { BodyTooLargeError } from "./http-errors.ts";

/** Largest chunk message sent to the service (UploadDocumentRequest allows 4 MiB; 1 MiB is its sweet spot). */
const maxChunkBytes = 1024 * 1024;
/** Small network reads are gathered up to this before a message is sent, so a slow client does not cost one message per packet. */
const minChunkBytes = 64 * 1024;
/** What a multipart body may carry besides the document: boundaries, part headers, the sha256 field. */
const multipartOverheadBytes = 64 * 1024;
const maxPartHeaderBytes = 8 * 1024;
const maxTextFieldBytes = 1024;

type MessageField = DescField & { fieldKind: "message"; message: DescMessage };

/** The oneof of an upload request: `metadata` (first message) or `chunk` (every later one). */
/** The two parts of an upload's request: the metadata message and the bytes. */
export interface UploadShape {
  metadata: MessageField;
  chunk: DescField;
}

/** The metadata and chunk fields of an upload method, or undefined when `method` is not one (the OpenAPI document asks too). */
export function uploadShapeOf(method: DescMethod): UploadShape | undefined {
  if (method.methodKind !== "client_streaming") return undefined;
  for (const oneof of method.input.oneofs) {
    const metadata = oneof.fields.find((field): field is MessageField => field.name === "metadata" && field.fieldKind === "message");
    const chunk = oneof.fields.find((field) => field.name === "chunk" && field.fieldKind === "scalar" && field.scalar === ScalarType.BYTES);
    if (metadata && chunk) return { metadata, chunk };
  }
  return undefined;
}

/** A client stream of metadata then chunks: its input has a oneof of message `metadata` and bytes `chunk`. */
export function isUploadMethod(method: DescMethod): boolean {
  return uploadShapeOf(method) !== undefined;
}

/** What the first message says about the document; empty and zero mean "not given". */
interface DocumentFacts {
  filename: string;
  mediaType: string;
  sizeBytes: number;
  sha256: string;
}

function metadataMessage(method: DescMethod, shape: UploadShape, facts: DocumentFacts): Message {
  const metadata = reflect(shape.metadata.message);
  const values: Record<string, string | bigint> = {
    filename: facts.filename,
    media_type: facts.mediaType,
    size_bytes: BigInt(facts.sizeBytes),
    sha256: facts.sha256,
  };
  for (const field of metadata.fields) {
    const value = values[field.name];
    if (value) metadata.set(field, value);
  }
  const request = reflect(method.input);
  request.set(shape.metadata, metadata);
  return request.message;
}

function chunkMessage(method: DescMethod, shape: UploadShape, bytes: Uint8Array): Message {
  const request = reflect(method.input);
  request.set(shape.chunk, bytes);
  return request.message;
}

/**
 * The upload request stream. `failure` is the error that ended it early (413, a malformed form),
 * if any: the HTTP client sending the stream to the service reports such a failure only as
 * "fetch failed", so the caller answers with `failure` when it is set.
 */
export interface UploadMessages extends AsyncIterable<Message> {
  readonly failure: unknown;
}

function keepingFailure(messages: AsyncIterable<Message>): UploadMessages {
  const stream = {
    failure: undefined as unknown,
    async *[Symbol.asyncIterator](): AsyncGenerator<Message> {
      try {
        yield* messages;
      } catch (error) {
        stream.failure = error;
        throw error;
      }
    },
  };
  return stream;
}

/**
 * Turns the HTTP request into the UploadDocument request stream without buffering the document.
 * - Raw body: Content-Type is the document's media type; the filename comes from
 *   Content-Disposition (`attachment; filename="a.pdf"`) or `?filename=`; size_bytes from
 *   Content-Length; sha256 from `?sha256=` or a `Content-Digest`/`Repr-Digest: sha-256=:<base64>:`.
 * - multipart/form-data: the first file part is the document (its part headers give filename and
 *   media type); a `sha256` text field may come before it; nothing may follow it.
 * Chunks are 64 KiB..1 MiB (the last may be smaller), never empty. Over `maxBytes` (declared in
 * Content-Length, or counted as the bytes flow) it throws BodyTooLargeError (413). What the
 * headers alone decide (a declared size over the limit, a malformed digest or boundary) is thrown
 * at once, before any backend call; the rest while the stream is read, and kept in `failure`.
 */
export function uploadMessages(req: Request, method: DescMethod, maxBytes: number): UploadMessages {
  const shape = uploadShapeOf(method);
  if (!shape) throw new ConnectError(`${method.name} is not an upload`, Code.Internal);
  const url = new URL(req.url);
  const declaredBytes = contentLengthOf(req.headers);
  const contentType = req.headers.get("content-type") ?? "";
  const querySha256 = (url.searchParams.get("sha256") ?? "").trim().toLowerCase();
  const toChunk = (bytes: Uint8Array) => chunkMessage(method, shape, bytes);

  if (/^multipart\/form-data\s*(;|$)/i.test(contentType)) {
    const boundary = getMultipartBoundary(contentType);
    // RFC 2046 caps a boundary at 70 characters, which also bounds the cost of searching for it.
    if (!boundary || boundary.length > 70) {
      throw new ConnectError("header Content-Type: multipart/form-data needs a boundary of 1 to 70 characters", Code.InvalidArgument);
    }
    if (declaredBytes > maxBytes + multipartOverheadBytes) throw new BodyTooLargeError(maxBytes, "document");
    const toMetadata = (facts: DocumentFacts) => metadataMessage(method, shape, { ...facts, sha256: facts.sha256 || querySha256 });
    return keepingFailure(multipartMessages(req.body, boundary, maxBytes, toMetadata, toChunk));
  }

  if (declaredBytes > maxBytes) throw new BodyTooLargeError(maxBytes, "document");
  const facts: DocumentFacts = {
    filename: filenameOf(req.headers.get("content-disposition")) || basename(url.searchParams.get("filename") ?? ""),
    mediaType: documentMediaTypeOf(contentType),
    sizeBytes: declaredBytes,
    sha256: querySha256 || digestOf(req.headers, "content-digest") || digestOf(req.headers, "repr-digest"),
  };
  return keepingFailure(rawMessages(req.body, maxBytes, metadataMessage(method, shape, facts), toChunk));
}

function contentLengthOf(headers: Headers): number {
  const declared = Number(headers.get("content-length") ?? "");
  return Number.isSafeInteger(declared) && declared > 0 ? declared : 0;
}

/** The media type of a raw body, without parameters; curl's default for --data-binary names no document type. */
function documentMediaTypeOf(contentType: string): string {
  const mediaType = contentType.split(";")[0]!.trim().toLowerCase();
  return mediaType === "application/x-www-form-urlencoded" ? "" : mediaType;
}

/** The last path segment: some clients send the whole client-side path, and the service refuses a "/". */
function basename(filename: string): string {
  return filename.slice(Math.max(filename.lastIndexOf("/"), filename.lastIndexOf("\\")) + 1).trim();
}

/** The filename of a Content-Disposition header, decoded as the multipart parser decodes part headers (quoting, RFC 5987 filename*). */
function filenameOf(contentDisposition: string | null): string {
  if (!contentDisposition) return "";
  const part = new MultipartPart(new TextEncoder().encode(`content-disposition: ${contentDisposition}`), []);
  return basename(part.filename ?? "");
}

/** The sha-256 of an RFC 9530 digest header (`sha-256=:<base64>:`, other algorithms ignored), as hex. */
function digestOf(headers: Headers, name: string): string {
  const value = headers.get(name);
  if (!value) return "";
  for (const member of value.split(",")) {
    const [algorithm = "", encoded = ""] = member.trim().split(/=(.*)/s);
    if (algorithm.trim().toLowerCase() !== "sha-256") continue;
    const bytes = /^:([A-Za-z0-9+/]+={0,2}):$/.exec(encoded.trim()) ? decodeBase64(encoded.trim().slice(1, -1)) : undefined;
    if (bytes?.length !== 32) {
      throw new ConnectError(`header ${name}: sha-256 must be 32 bytes in base64 between colons (sha-256=:<base64>:)`, Code.InvalidArgument);
    }
    return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  }
  return "";
}

function decodeBase64(encoded: string): Uint8Array | undefined {
  try {
    return Uint8Array.from(atob(encoded), (char) => char.charCodeAt(0));
  } catch {
    return undefined;
  }
}

async function* rawMessages(body: ReadableStream<Uint8Array> | null, maxBytes: number, metadata: Message, toChunk: (bytes: Uint8Array) => Message): AsyncGenerator<Message> {
  yield metadata;
  if (!body) return;
  for await (const bytes of rechunk(piecesOf(body), maxBytes)) yield toChunk(bytes);
}

/** The pieces of a stream as they arrive; an early exit (the backend failed) cancels the stream. */
async function* piecesOf(body: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = body.getReader();
  let done = false;
  try {
    for (;;) {
      const next = await reader.read();
      if (next.done) {
        done = true;
        return;
      }
      yield next.value;
    }
  } finally {
    if (!done) await reader.cancel().catch(() => undefined);
  }
}

/**
 * Re-cuts a byte stream into chunks of minChunkBytes..maxChunkBytes (the last may be smaller),
 * never empty, counting the bytes against `maxBytes` as they pass. Holds at most one chunk.
 */
async function* rechunk(pieces: AsyncIterable<Uint8Array>, maxBytes: number): AsyncGenerator<Uint8Array> {
  let held: Uint8Array[] = [];
  let heldBytes = 0;
  let total = 0;
  const take = (): Uint8Array => {
    const chunk = held.length === 1 ? held[0]! : concat(held, heldBytes);
    held = [];
    heldBytes = 0;
    return chunk;
  };
  for await (const piece of pieces) {
    total += piece.length;
    if (total > maxBytes) throw new BodyTooLargeError(maxBytes, "document");
    let rest = piece;
    while (rest.length > 0) {
      const part = rest.subarray(0, maxChunkBytes - heldBytes);
      held.push(part);
      heldBytes += part.length;
      rest = rest.subarray(part.length);
      if (heldBytes === maxChunkBytes) yield take();
    }
    if (heldBytes >= minChunkBytes) yield take();
  }
  if (heldBytes > 0) yield take();
}

function concat(pieces: Uint8Array[], length: number): Uint8Array {
  const joined = new Uint8Array(length);
  let offset = 0;
  for (const piece of pieces) {
    joined.set(piece, offset);
    offset += piece.length;
  }
  return joined;
}

/**
 * The upload stream of a multipart/form-data body. The multipart parser from
 * @remix-run/multipart-parser yields a part only once it has read all of it, so a file part
 * would sit whole in memory; the MultipartStream below finds the boundaries itself and hands the
 * file on as it arrives, and the parser's MultipartPart still decodes every part's headers.
 */
async function* multipartMessages(
  body: ReadableStream<Uint8Array> | null,
  boundary: string,
  maxBytes: number,
  toMetadata: (facts: DocumentFacts) => Message,
  toChunk: (bytes: Uint8Array) => Message,
): AsyncGenerator<Message> {
  if (!body) throw new ConnectError("a multipart/form-data upload needs a body with one file part", Code.InvalidArgument);
  const form = new MultipartStream(body, boundary, maxBytes);
  try {
    let sha256 = "";
    for (;;) {
      const part = await form.nextPart();
      if (!part) throw new ConnectError("the multipart/form-data body has no file part (send the document as a file, e.g. curl -F file=@doc.pdf)", Code.InvalidArgument);
      if (part.isFile) {
        yield toMetadata({ filename: basename(part.filename ?? ""), mediaType: part.mediaType?.toLowerCase() ?? "", sizeBytes: 0, sha256 });
        for await (const bytes of rechunk(form.body(), maxBytes)) yield toChunk(bytes);
        if (await form.nextPart()) throw new ConnectError("the file must be the last part of the form (send sha256 before it)", Code.InvalidArgument);
        return;
      }
      if (part.name !== "sha256") throw new ConnectError(`unknown form field ${JSON.stringify((part.name ?? "").slice(0, 40))}: a form upload carries an optional sha256 field and then one file`, Code.InvalidArgument);
      sha256 = (await form.text(maxTextFieldBytes)).trim().toLowerCase();
    }
  } finally {
    await form.close();
  }
}

const crlf = new Uint8Array([13, 10]);
const headerEnd = new Uint8Array([13, 10, 13, 10]);

/** Index of `needle` in `haystack` from `from`, or -1. Bounded by the needle's length (≤ 74 bytes) per candidate. */
function indexOfBytes(haystack: Uint8Array, needle: Uint8Array, from: number): number {
  const last = haystack.length - needle.length;
  for (let at = haystack.indexOf(needle[0]!, from); at !== -1 && at <= last; at = haystack.indexOf(needle[0]!, at + 1)) {
    let matched = 1;
    while (matched < needle.length && haystack[at + matched] === needle[matched]) matched++;
    if (matched === needle.length) return at;
  }
  return -1;
}

/**
 * A multipart body read part by part, in one pass, with bounded memory: a part's body is handed
 * out as it arrives, less the few bytes that might start the next boundary.
 */
class MultipartStream {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  /** "\r\n--boundary": every boundary line is preceded by a line break that belongs to it. */
  readonly #delimiter: Uint8Array;
  /** The document limit; the body as a whole may add multipartOverheadBytes to it. */
  readonly #maxBytes: number;
  /** Unread bytes. Starts with a line break so the first boundary looks like every other one. */
  #buffer: Uint8Array = crlf;
  #readBytes = 0;
  #ended = false;
  /** "body": inside a part (or the preamble); "boundary": just past a delimiter; "done": past the closing one. */
  #state: "body" | "boundary" | "done" = "body";

  constructor(body: ReadableStream<Uint8Array>, boundary: string, maxBytes: number) {
    this.#reader = body.getReader();
    this.#delimiter = new TextEncoder().encode(`\r\n--${boundary}`);
    this.#maxBytes = maxBytes;
  }

  /** Reads one more piece into the buffer; false at the end of the body. */
  async #fill(): Promise<boolean> {
    if (this.#ended) return false;
    const next = await this.#reader.read();
    if (next.done) {
      this.#ended = true;
      return false;
    }
    this.#readBytes += next.value.length;
    if (this.#readBytes > this.#maxBytes + multipartOverheadBytes) throw new BodyTooLargeError(this.#maxBytes, "document");
    this.#buffer = this.#buffer.length === 0 ? next.value : concat([this.#buffer, next.value], this.#buffer.length + next.value.length);
    return true;
  }

  async #need(bytes: number): Promise<void> {
    while (this.#buffer.length < bytes) {
      if (!(await this.#fill())) throw new ConnectError("the multipart/form-data body ends before its closing boundary", Code.InvalidArgument);
    }
  }

  /** Skips what is left of the current part and returns the next part's headers, or undefined after the last part. */
  async nextPart(): Promise<MultipartPart | undefined> {
    if (this.#state === "body") {
      // The rest of the current part (or the preamble) is not wanted: read past it.
      for await (const skipped of this.body()) void skipped;
    }
    if (this.#state === "done") return undefined;
    await this.#need(2);
    if (this.#buffer[0] === 45 && this.#buffer[1] === 45) {
      this.#state = "done";
      return undefined;
    }
    // The boundary line ends here (RFC 2046 lets whitespace pad it); its line break is kept, so
    // a part without headers is simply the header end found at once.
    let start = 0;
    for (;;) {
      while (start < this.#buffer.length && (this.#buffer[start] === 32 || this.#buffer[start] === 9)) start++;
      if (start < this.#buffer.length || !(await this.#fill())) break;
    }
    let end: number;
    let from = start;
    while ((end = indexOfBytes(this.#buffer, headerEnd, from)) === -1) {
      if (this.#buffer.length - start > maxPartHeaderBytes) throw new ConnectError(`a multipart part's headers exceed ${maxPartHeaderBytes} bytes`, Code.InvalidArgument);
      // Only the last three bytes of what was searched could begin the header end.
      from = Math.max(start, this.#buffer.length - 3);
      await this.#need(this.#buffer.length + 1);
    }
    if (end !== start && (this.#buffer[start] !== 13 || this.#buffer[start + 1] !== 10)) {
      throw new ConnectError("a multipart boundary line must end with CRLF", Code.InvalidArgument);
    }
    if (end - start > maxPartHeaderBytes) throw new ConnectError(`a multipart part's headers exceed ${maxPartHeaderBytes} bytes`, Code.InvalidArgument);
    const headers = this.#buffer.slice(Math.min(start + 2, end), end);
    this.#buffer = this.#buffer.subarray(end + headerEnd.length);
    this.#state = "body";
    return new MultipartPart(headers, []);
  }

  /** The current part's bytes as they arrive, up to the next boundary. */
  async *body(): AsyncGenerator<Uint8Array> {
    while (this.#state === "body") {
      const at = indexOfBytes(this.#buffer, this.#delimiter, 0);
      if (at !== -1) {
        const piece = this.#buffer.subarray(0, at);
        this.#buffer = this.#buffer.subarray(at + this.#delimiter.length);
        this.#state = "boundary";
        if (piece.length > 0) yield piece;
        return;
      }
      // Everything but a tail that could be the start of the delimiter is part of the body.
      const safe = this.#buffer.length - (this.#delimiter.length - 1);
      if (safe > 0) {
        const piece = this.#buffer.subarray(0, safe);
        this.#buffer = this.#buffer.subarray(safe);
        yield piece;
      }
      if (!(await this.#fill())) throw new ConnectError("the multipart/form-data body ends inside a part, before its closing boundary", Code.InvalidArgument);
    }
  }

  /** The current part as UTF-8 text of at most `maxBytes`. */
  async text(maxBytes: number): Promise<string> {
    const pieces: Uint8Array[] = [];
    let length = 0;
    for await (const piece of this.body()) {
      length += piece.length;
      if (length > maxBytes) throw new ConnectError(`a form field exceeds ${maxBytes} bytes`, Code.InvalidArgument);
      pieces.push(piece);
    }
    return new TextDecoder().decode(concat(pieces, length));
  }

  /** Stops reading the request body (what follows the closing boundary is ignored). */
  async close(): Promise<void> {
    await this.#reader.cancel().catch(() => undefined);
  }
}

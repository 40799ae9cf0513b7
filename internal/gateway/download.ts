/**
 * Downloads over plain HTTP: a server stream of byte chunks (DownloadJobResult) becomes one
 * response body with the result's own media type and length, streamed chunk by chunk as the
 * backend sends them, so a result of any size passes through in bounded memory.
 */
import { ScalarType, type DescMessage, type DescMethod, type Message } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";

function hasScalar(message: DescMessage, name: string, scalars: ScalarType[]): boolean {
  const field = message.fields.find((candidate) => candidate.name === name);
  return field?.fieldKind === "scalar" && scalars.includes(field.scalar);
}

/** A server stream whose messages are byte chunks: bytes `chunk`, int64 `total_size`, string `media_type`. */
export function isDownloadMethod(method: DescMethod): boolean {
  return (
    method.methodKind === "server_streaming" &&
    hasScalar(method.output, "chunk", [ScalarType.BYTES]) &&
    hasScalar(method.output, "total_size", [ScalarType.INT64, ScalarType.UINT64]) &&
    hasScalar(method.output, "media_type", [ScalarType.STRING])
  );
}

/** The fields of one chunk message that isDownloadMethod vouched for (by their protobuf-es names). */
interface Chunk {
  chunk: Uint8Array;
  offset: bigint;
  totalSize: bigint;
  mediaType: string;
}

function chunkOf(message: Message): Chunk {
  const fields = message as unknown as Partial<Chunk>;
  if (!(fields.chunk instanceof Uint8Array) || typeof fields.totalSize !== "bigint") {
    throw new ConnectError(`${message.$typeName} is not a download chunk`, Code.Internal);
  }
  return { chunk: fields.chunk, offset: fields.offset ?? 0n, totalSize: fields.totalSize, mediaType: fields.mediaType ?? "" };
}

/** A media type as a header can carry it; anything else is sent as plain bytes. */
const mediaTypePattern = /^[a-z0-9!#$&^_.+-]+\/[a-z0-9!#$&^_.+-]+(\s*;\s*[a-z0-9!#$&^_.+-]+=("[^"\r\n]*"|[a-z0-9!#$&^_.+-]+))*$/i;

/**
 * Waits for the first chunk, so a failure before any byte (NOT_FOUND, PERMISSION_DENIED,
 * OUT_OF_RANGE...) is thrown here and becomes a proper error response; then answers 200 with
 * Content-Type = media_type (application/octet-stream when empty), Content-Length = the bytes
 * still to come (total_size less the first chunk's offset, for a resumed download) and
 * Content-Disposition: attachment, and streams the rest. A later failure, or a stream that
 * delivers more or fewer bytes than it announced, errors the body: the client sees a truncated
 * transfer, never a short file that looks complete. The body's cancel aborts `abort`.
 */
export async function downloadResponse(messages: AsyncIterable<Message>, abort: AbortController): Promise<Response> {
  const iterator = messages[Symbol.asyncIterator]();
  const first = await iterator.next();
  const head = first.done ? undefined : chunkOf(first.value);
  const length = head ? head.totalSize - head.offset : 0n;
  if (length < 0n) throw new ConnectError(`download starts at offset ${head?.offset} past its size ${head?.totalSize}`, Code.Internal);
  const mediaType = head && mediaTypePattern.test(head.mediaType) ? head.mediaType : "application/octet-stream";

  let sent = 0n;
  let cancelled = false;
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      if (!head) return controller.close();
      sent += BigInt(head.chunk.length);
      if (head.chunk.length > 0) controller.enqueue(head.chunk);
      if (sent > length) controller.error(new ConnectError(`download sent ${sent} bytes of ${length}`, Code.DataLoss));
    },
    async pull(controller) {
      try {
        const next = await iterator.next();
        if (cancelled) return;
        if (next.done) {
          if (sent !== length) throw new ConnectError(`download ended after ${sent} of ${length} bytes`, Code.DataLoss);
          return controller.close();
        }
        const { chunk } = chunkOf(next.value);
        sent += BigInt(chunk.length);
        if (sent > length) throw new ConnectError(`download sent ${sent} bytes of ${length}`, Code.DataLoss);
        if (chunk.length > 0) controller.enqueue(chunk);
      } catch (error) {
        if (!cancelled) controller.error(error);
      }
    },
    cancel() {
      cancelled = true;
      abort.abort();
      iterator.return?.()?.catch(() => undefined);
    },
  });

  return new Response(body, {
    status: 200,
    headers: {
      "content-type": mediaType,
      "content-length": String(length),
      "content-disposition": "attachment",
      // The result is the tenant's own document content: never let a browser sniff it into HTML.
      "x-content-type-options": "nosniff",
    },
  });
}

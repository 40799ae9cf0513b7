/**
 * A decompressed-size check of a PDF's Flate streams, run before PDF.js sees the file.
 *
 * PDF.js inflates a stream lazily, when a page's text, a font or an outline needs it, into a
 * buffer that holds all of it: a few megabytes of deflated zeros become gigabytes of memory,
 * outside the JavaScript heap. It offers no limit and no hook into its decoders. So every
 * stream body in the file that starts with a zlib header (the only Flate data PDF.js accepts)
 * is inflated here once with zlib and a running budget, and the document is refused as soon
 * as the total passes it; the output is counted and dropped. A stream whose output is itself
 * zlib data (a /FlateDecode /FlateDecode chain) is inflated again, and counted again.
 *
 * Not covered, because checking them means writing the decoders: LZWDecode and
 * RunLengthDecode streams (which expand too), and Flate data behind ASCIIHexDecode or
 * ASCII85Decode. PDF.js decodes those without a bound; the stage's thread, with its heap limit
 * and its timeout, is what stops such a document.
 */
import { once } from "node:events";
import { constants, createInflate, inflateSync } from "node:zlib";
import { inflatedTooLarge } from "./errors.ts";

const STREAM = Buffer.from("stream");
const END_STREAM = Buffer.from("endstream");
/** Flate data inside Flate data gets inflated this many levels deep at most. */
const MAX_NESTING = 4;

/** The byte ranges of the stream bodies in a PDF file: after `stream` and its EOL, up to `endstream`. */
function* streamBodies(pdf: Buffer): Generator<Buffer> {
  let at = 0;
  while ((at = pdf.indexOf(STREAM, at)) !== -1) {
    const keywordEnd = at + STREAM.length;
    const isEnd = at >= 3 && pdf.toString("latin1", at - 3, at) === "end";
    at = keywordEnd;
    if (isEnd) continue;
    let start = keywordEnd;
    if (pdf[start] === 0x0d) start++;
    if (pdf[start] === 0x0a) start++;
    if (start === keywordEnd) continue; // "stream" not followed by an end of line is not the keyword
    const end = pdf.indexOf(END_STREAM, start);
    const body = pdf.subarray(start, end === -1 ? pdf.length : end);
    at = end === -1 ? pdf.length : end + END_STREAM.length;
    yield body;
  }
}

/** A zlib header as PDF.js's FlateStream requires it: deflate, a valid check, no preset dictionary. */
function hasZlibHeader(data: Uint8Array): boolean {
  if (data.length < 2) return false;
  const cmf = data[0]!;
  const flg = data[1]!;
  return (cmf & 0x0f) === 8 && ((cmf << 8) | flg) % 31 === 0 && (flg & 0x20) === 0;
}

/** Bytes a zlib stream inflates to before it ends or breaks, counted in chunks and dropped. */
async function inflatedSizeUpTo(data: Buffer, limit: number): Promise<number> {
  const inflate = createInflate({ finishFlush: constants.Z_SYNC_FLUSH });
  let size = 0;
  inflate.on("data", (chunk: Buffer) => {
    size += chunk.byteLength;
    if (size > limit) inflate.destroy();
  });
  inflate.end(data);
  await Promise.race([once(inflate, "end"), once(inflate, "close")]).catch(() => undefined);
  return size;
}

/**
 * Throws PermanentStageError `document_too_large` when the PDF's Flate streams inflate to more
 * than `maxInflatedBytes` together.
 */
export async function checkPdfInflatedSize(bytes: Uint8Array, maxInflatedBytes: number): Promise<void> {
  const pdf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let total = 0;
  for (let body of streamBodies(pdf)) {
    for (let level = 0; level < MAX_NESTING && hasZlibHeader(body); level++) {
      const room = maxInflatedBytes - total;
      let out: Buffer | undefined;
      try {
        // Streams cut short or followed by an end of line are common; PDF.js reads what inflates.
        out = inflateSync(body, { maxOutputLength: Math.max(1, room), finishFlush: constants.Z_SYNC_FLUSH });
        total += out.byteLength;
      } catch (err) {
        if ((err as { code?: string }).code === "ERR_BUFFER_TOO_LARGE") throw inflatedTooLarge(maxInflatedBytes);
        // Broken data: PDF.js keeps what inflated before the break, so that much counts.
        total += await inflatedSizeUpTo(body, room);
      }
      if (total > maxInflatedBytes) throw inflatedTooLarge(maxInflatedBytes);
      if (!out) break;
      body = out;
    }
  }
}

/**
 * A decompressed-size check of a PDF's Flate streams, run before PDF.js sees the file.
 *
 * PDF.js inflates a stream lazily, when a page's text, a font or an outline needs it, into a
 * buffer that holds all of it: a few megabytes of deflated zeros become gigabytes of memory,
 * outside the JavaScript heap. It offers no limit and no hook into its decoders. So every
 * stream body in the file that starts with a zlib header (the only Flate data PDF.js accepts)
 * is inflated here once with zlib and a running budget, and the document is refused as soon
 * as the total passes it; the output is counted and dropped. A stream whose output is itself
 * zlib data (a /FlateDecode /FlateDecode chain) is inflated again, and counted again. Each body
 * is inflated from its start up to where its deflate data ends, not up to the next `endstream`:
 * deflate data can hold the bytes `endstream` (a stored block) while PDF.js, going by /Length,
 * reads on past them.
 *
 * This is not a full bound, and cannot be one from outside PDF.js without writing its decoders:
 * LZWDecode and RunLengthDecode expand too (up to some 2,500× and 64×), Flate data can hide
 * behind ASCIIHexDecode or ASCII85Decode, and a page's content stream may claim an image codec
 * (DCT, JPX, JBIG2, CCITT) that PDF.js will then decode to the size the data declares. For those
 * the stage's thread (its timeout, and its heap limit, which does not count the typed arrays
 * PDF.js decodes into) is the only stop.
 */
import { once } from "node:events";
import { constants, createInflate, inflateSync } from "node:zlib";
import { inflatedTooLarge } from "./errors.ts";

const STREAM = Buffer.from("stream");
const END_STREAM = Buffer.from("endstream");
/** Flate data inside Flate data gets inflated this many levels deep at most. */
const MAX_NESTING = 4;

/**
 * Where each stream body of a PDF file starts (after `stream` and its end of line), as the rest
 * of the file from there; the scan for the next body goes on after the next `endstream`.
 */
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
    at = end === -1 ? pdf.length : end + END_STREAM.length;
    yield pdf.subarray(start);
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
        // zlib stops where the deflate data ends and ignores the rest of the file after it; a
        // stream cut short (common) gives what inflated, as PDF.js reads it.
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

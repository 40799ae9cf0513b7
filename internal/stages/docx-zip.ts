/**
 * A DOCX's zip container, opened with limits for mammoth to read.
 *
 * A zip bomb is a small file whose parts inflate to gigabytes, and a zip's headers can lie
 * about the sizes. So: the central directory is read first (yauzl) and a zip with too many
 * entries, or whose declared sizes add up past the limit, is refused before anything is
 * inflated; then each part mammoth reads is inflated as a stream and stopped as soon as it
 * passes its declared size or all parts read so far pass the limit. Parts mammoth never reads
 * (images: parse-docx does not convert them) are never inflated.
 */
import yauzl from "yauzl";
import { inflatedTooLarge, PermanentStageError } from "./errors.ts";

/** Entries a DOCX may have; a real one has tens to a few hundred. */
export const DOCX_MAX_ENTRIES = 10_000;

/**
 * The zip-file object mammoth reads a document through (the shape its own JSZip wrapper has,
 * lib/zipfile.js; `convertToHtml({ file })` takes one, lib/unzip.js).
 */
export interface DocxZip {
  exists(name: string): boolean;
  read(name: string, encoding?: string): Promise<Uint8Array | string>;
  write(name: string, contents: unknown): void;
  toArrayBuffer(): Promise<ArrayBuffer>;
  close(): void;
}

const corrupt = (cause: unknown) =>
  new PermanentStageError("corrupt_document", "the DOCX document is corrupt or unreadable", { cause });

/**
 * Opens the zip and checks its central directory. Throws PermanentStageError
 * `document_too_large` (too many entries, declared sizes past `maxInflatedBytes`) or
 * `corrupt_document` (not a zip). Reads later throw `document_too_large` once what they
 * inflated passes `maxInflatedBytes` in all, or a part passes its declared size.
 */
export async function openDocxZip(bytes: Uint8Array, maxInflatedBytes: number): Promise<DocxZip> {
  let zip: yauzl.ZipFile;
  try {
    zip = await yauzl.fromBufferPromise(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), {
      lazyEntries: true,
      autoClose: false,
      // Sizes are checked below, so a lie is reported as too large rather than as corrupt.
      validateEntrySizes: false,
    });
  } catch (cause) {
    throw corrupt(cause);
  }
  const entries = new Map<string, yauzl.Entry>();
  try {
    if (zip.entryCount > DOCX_MAX_ENTRIES) throw inflatedTooLarge(maxInflatedBytes);
    let declared = 0;
    for await (const entry of zip.eachEntry()) {
      declared += entry.uncompressedSize;
      if (declared > maxInflatedBytes) throw inflatedTooLarge(maxInflatedBytes);
      entries.set(entry.fileName, entry);
    }
  } catch (err) {
    zip.close();
    throw err instanceof PermanentStageError ? err : corrupt(err);
  }

  let inflated = 0;
  const readBytes = async (name: string): Promise<Uint8Array> => {
    const entry = entries.get(name);
    if (!entry) throw corrupt(new Error(`no part ${name}`));
    let stream;
    try {
      stream = await zip.openReadStreamPromise(entry);
    } catch (cause) {
      throw corrupt(cause);
    }
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        size += chunk.byteLength;
        inflated += chunk.byteLength;
        // A part larger than its header said is a bomb that lied; either way, stop inflating.
        if (size > entry.uncompressedSize || inflated > maxInflatedBytes) throw inflatedTooLarge(maxInflatedBytes);
        chunks.push(chunk);
      }
    } catch (err) {
      stream.destroy();
      throw err instanceof PermanentStageError ? err : corrupt(err);
    }
    return Buffer.concat(chunks, size);
  };

  return {
    exists: (name) => entries.has(name),
    async read(name, encoding) {
      const data = await readBytes(name);
      if (encoding === "base64") return Buffer.from(data).toString("base64");
      return encoding ? new TextDecoder(encoding).decode(data) : data;
    },
    write() {
      throw new Error("the DOCX is opened read-only");
    },
    toArrayBuffer() {
      return Promise.reject(new Error("the DOCX is opened read-only"));
    },
    close: () => zip.close(),
  };
}

/**
 * DOCX → mammoth's semantic HTML (headings from paragraph styles, tables, hyperlinks) → the
 * same extraction as HTML documents.
 */
import mammoth from "mammoth";
import { PermanentStageError } from "./errors.ts";
import { parseHtml } from "./parse-html.ts";
import type { ParsedDocument } from "./parsed-document.ts";

/** Parses a DOCX; a file mammoth cannot open (bad zip, no document part) is corrupt. */
export async function parseDocx(bytes: Uint8Array, signal: AbortSignal): Promise<ParsedDocument> {
  let html: string;
  try {
    const result = await mammoth.convertToHtml(
      { buffer: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength) },
      // Images would be inlined as base64 data URIs; their bytes are of no use for text.
      { convertImage: mammoth.images.imgElement(async () => ({ src: "" })) },
    );
    html = result.value;
  } catch (cause) {
    throw new PermanentStageError("corrupt_document", "the DOCX document is corrupt or unreadable", { cause });
  }
  signal.throwIfAborted();
  return parseHtml(html);
}

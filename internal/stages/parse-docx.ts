/**
 * DOCX → mammoth's semantic HTML (headings from paragraph styles, tables, hyperlinks) → the
 * same extraction as HTML documents. The zip is opened with a decompressed-size limit first
 * (docx-zip.ts), so a zip bomb fails as document_too_large instead of filling the memory.
 */
import mammoth from "mammoth";
import { openDocxZip } from "./docx-zip.ts";
import { findStageError, PermanentStageError } from "./errors.ts";
import { DEFAULT_MAX_INFLATED_BYTES } from "./options.ts";
import { parseHtml } from "./parse-html.ts";
import type { ParsedDocument } from "./parsed-document.ts";

/**
 * Parses a DOCX whose parts may inflate to `maxInflatedBytes` in all. A file mammoth cannot open
 * (bad zip, no document part) is corrupt_document; one that inflates past the limit is
 * document_too_large.
 */
export async function parseDocx(bytes: Uint8Array, signal: AbortSignal, maxInflatedBytes = DEFAULT_MAX_INFLATED_BYTES): Promise<ParsedDocument> {
  const zip = await openDocxZip(bytes, maxInflatedBytes);
  let html: string;
  try {
    // mammoth takes an opened zip as `file` (lib/unzip.js), which its typings do not declare.
    const input = { file: zip } as unknown as Parameters<typeof mammoth.convertToHtml>[0];
    const result = await mammoth.convertToHtml(
      input,
      // Images would be inlined as base64 data URIs; their bytes are of no use for text.
      { convertImage: mammoth.images.imgElement(async () => ({ src: "" })) },
    );
    html = result.value;
  } catch (cause) {
    throw findStageError(cause) ?? new PermanentStageError("corrupt_document", "the DOCX document is corrupt or unreadable", { cause });
  } finally {
    zip.close();
  }
  signal.throwIfAborted();
  return parseHtml(html);
}

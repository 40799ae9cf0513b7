/**
 * PDF → text per page, page count, outline entries as headings and link annotations, with
 * unpdf (PDF.js built for server runtimes, no worker thread, no canvas).
 */
import { getDocumentProxy } from "unpdf";
import { PermanentStageError } from "./errors.ts";
import { checkPdfInflatedSize } from "./pdf-streams.ts";
import { DEFAULT_MAX_INFLATED_BYTES } from "./options.ts";
import { tidyText, type Heading, type Link, type ParsedDocument } from "./parsed-document.ts";

type PdfDocument = Awaited<ReturnType<typeof getDocumentProxy>>;
interface OutlineNode {
  title: string;
  items: OutlineNode[];
}

/**
 * Extracts at most `maxPages` pages (0 = all); pages are separated by blank lines. A PDF whose
 * Flate streams inflate past `maxInflatedBytes` is document_too_large (see pdf-streams.ts).
 */
export async function parsePdf(bytes: Uint8Array, maxPages: number, signal: AbortSignal, maxInflatedBytes = DEFAULT_MAX_INFLATED_BYTES): Promise<ParsedDocument> {
  await checkPdfInflatedSize(bytes, maxInflatedBytes);
  signal.throwIfAborted();
  let doc: PdfDocument;
  try {
    // PDF.js may transfer (detach) the buffer it is given; the caller's bytes must survive. A
    // copy as a plain Uint8Array: PDF.js refuses a Buffer (whose slice() would not copy either).
    doc = await getDocumentProxy(new Uint8Array(bytes), { stopAtErrors: false, verbosity: 0 /* errors only: warnings went to stdout */ });
  } catch (cause) {
    throw classifyPdfError(cause);
  }
  try {
    const pageCount = doc.numPages;
    const limit = maxPages > 0 ? Math.min(maxPages, pageCount) : pageCount;
    const pages: string[] = [];
    const links: Link[] = [];
    for (let n = 1; n <= limit; n++) {
      signal.throwIfAborted();
      const page = await doc.getPage(n);
      const content = await page.getTextContent();
      let text = "";
      for (const item of content.items) {
        if ("str" in item) text += item.str + (item.hasEOL ? "\n" : "");
      }
      pages.push(unwrapLines(tidyText(text)));
      for (const a of (await page.getAnnotations()) as { subtype?: string; url?: string }[]) {
        if (a.subtype === "Link" && a.url) links.push({ href: a.url, text: a.url });
      }
      page.cleanup();
    }
    const headings = flattenOutline(((await doc.getOutline()) ?? []) as OutlineNode[], 1);
    const result: ParsedDocument = { text: pages.filter(Boolean).join("\n\n"), headings, tables: [], links, pageCount };
    if (limit < pageCount) result.pagesParsed = limit;
    return result;
  } catch (cause) {
    if (signal.aborted) throw signal.reason;
    throw cause instanceof PermanentStageError ? cause : classifyPdfError(cause);
  } finally {
    await doc.loadingTask.destroy();
  }
}

/**
 * PDF text has a line break wherever the layout wrapped a line. A break inside a sentence
 * (no terminal punctuation before it, a lowercase letter after it) is undone, de-hyphenating
 * split words, so later sentence segmentation sees whole sentences.
 */
export function unwrapLines(text: string): string {
  return text
    .replace(/(\p{L})-\n(?=\p{Ll})/gu, "$1")
    .replace(/([^\n.!?:;])\n(?=\p{Ll})/gu, "$1 ");
}

function flattenOutline(nodes: OutlineNode[], level: number): Heading[] {
  return nodes.flatMap((node) => [
    { level, text: node.title.trim() },
    ...flattenOutline(node.items ?? [], level + 1),
  ]).filter((h) => h.text !== "");
}

function classifyPdfError(cause: unknown): PermanentStageError {
  if ((cause as { name?: string })?.name === "PasswordException") {
    return new PermanentStageError("encrypted_document", "the PDF is password-protected", { cause });
  }
  return new PermanentStageError("corrupt_document", "the PDF document is corrupt or unreadable", { cause });
}

/**
 * Content sniffing for text formats, which have no magic bytes. Formats that identify themselves
 * (JSON that parses, an HTML document) win outright; between the ambiguous ones (CSV, Markdown,
 * plain text) the filename or declared media type breaks the tie when the content allows it.
 */

/** The text media types detect can tell apart and parse understands. */
export const TEXT_MEDIA_TYPES = {
  plain: "text/plain",
  markdown: "text/markdown",
  html: "text/html",
  csv: "text/csv",
  tsv: "text/tab-separated-values",
  json: "application/json",
} as const;

const BY_EXTENSION: Record<string, string> = {
  txt: "text/plain", text: "text/plain", log: "text/plain",
  md: "text/markdown", markdown: "text/markdown",
  htm: "text/html", html: "text/html", xhtml: "text/html",
  csv: "text/csv", tsv: "text/tab-separated-values", tab: "text/tab-separated-values",
  json: "application/json",
};

/** The text media type a filename or declared type suggests, if any. */
export function textTypeHint(filename?: string, mediaTypeHint?: string): string | undefined {
  const declared = mediaTypeHint?.split(";")[0]?.trim().toLowerCase();
  if (declared === "text/x-markdown") return TEXT_MEDIA_TYPES.markdown;
  if (declared === "application/xhtml+xml") return TEXT_MEDIA_TYPES.html;
  if (declared && Object.values<string>(TEXT_MEDIA_TYPES).includes(declared)) return declared;
  const ext = filename?.toLowerCase().match(/\.([a-z0-9]+)$/)?.[1];
  return ext ? BY_EXTENSION[ext] : undefined;
}

/** Picks the media type of decoded text; `hint` comes from textTypeHint. */
export function sniffTextType(text: string, hint?: string): string {
  const head = text.slice(0, 64 * 1024);
  if (isJson(text)) return TEXT_MEDIA_TYPES.json;
  if (/^\s*(?:<!--[\s\S]*?-->\s*)*(?:<\?xml[^>]*>\s*)?<!doctype html|<html[\s>]/i.test(head)) return TEXT_MEDIA_TYPES.html;
  if (hint && isPlausible(head, hint)) return hint;
  if (delimitedLike(head, ",") || delimitedLike(head, ";")) return TEXT_MEDIA_TYPES.csv;
  if (delimitedLike(head, "\t")) return TEXT_MEDIA_TYPES.tsv;
  if (markdownLike(head)) return TEXT_MEDIA_TYPES.markdown;
  if ((head.match(/<\/?(?:p|div|span|a|h[1-6]|table|tr|td|ul|li|br|body|head)\b[^>]*>/gi)?.length ?? 0) >= 3) {
    return TEXT_MEDIA_TYPES.html;
  }
  return TEXT_MEDIA_TYPES.plain;
}

function isPlausible(head: string, hint: string): boolean {
  switch (hint) {
    case TEXT_MEDIA_TYPES.html: return /<[a-z!][^>]*>/i.test(head);
    case TEXT_MEDIA_TYPES.csv: return delimitedLike(head, ",", 1) || delimitedLike(head, ";", 1);
    case TEXT_MEDIA_TYPES.tsv: return delimitedLike(head, "\t", 1);
    case TEXT_MEDIA_TYPES.markdown:
    case TEXT_MEDIA_TYPES.plain: return true;
    default: return false; // JSON that did not parse is not JSON, whatever the name says
  }
}

function isJson(text: string): boolean {
  const trimmed = text.trim();
  if (!/^[[{]/.test(trimmed)) return false;
  try {
    JSON.parse(trimmed);
    return true;
  } catch {
    return false;
  }
}

/** Every one of the first lines splits into the same number (≥ 2) of quote-aware fields. */
function delimitedLike(head: string, delimiter: string, minLines = 2): boolean {
  const lines = head.split(/\r?\n/).filter((l) => l.trim() !== "").slice(0, 20);
  // The last line of a truncated sample may be cut short.
  if (head.length === 64 * 1024 && lines.length > 2) lines.pop();
  if (lines.length < minLines) return false;
  const counts = new Set(lines.map((l) => fieldCount(l, delimiter)));
  const [only] = counts;
  return counts.size === 1 && only !== undefined && only >= 2;
}

function fieldCount(line: string, delimiter: string): number {
  let fields = 1;
  let quoted = false;
  for (const ch of line) {
    if (ch === '"') quoted = !quoted;
    else if (ch === delimiter && !quoted) fields++;
  }
  return fields;
}

const MARKDOWN_SIGNALS: Record<string, RegExp> = {
  heading: /^#{1,6}\s+\S/m,
  fence: /^(?:```|~~~)/m,
  link: /\[[^\]\n]+\]\([^)\s]+(?:\s+"[^"]*")?\)/,
  table: /^\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)+\|?\s*$/m,
  setext: /^\S[^\n]*\n(?:={3,}|-{3,})\s*$/m,
  emphasis: /(?:\*\*|__)[^*_\n]+(?:\*\*|__)/,
  list: /^\s{0,3}(?:[-*+]|\d+\.)\s+\S/m,
  quote: /^>\s?\S/m,
};
const STRONG = ["heading", "fence", "link", "table", "setext"];

/** At least one structural Markdown construct and two kinds of construct in all. */
function markdownLike(head: string): boolean {
  const found = Object.keys(MARKDOWN_SIGNALS).filter((k) => MARKDOWN_SIGNALS[k]!.test(head));
  return found.some((k) => STRONG.includes(k)) && found.length >= 2;
}

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
  if (HTML_DOCUMENT_START.test(head) || /<html[\s>]/i.test(head)) return TEXT_MEDIA_TYPES.html;
  if (hint && isPlausible(head, hint)) return hint;
  if (delimitedLike(head, ",") || delimitedLike(head, ";")) return TEXT_MEDIA_TYPES.csv;
  if (delimitedLike(head, "\t")) return TEXT_MEDIA_TYPES.tsv;
  if (markdownLike(head)) return TEXT_MEDIA_TYPES.markdown;
  if (hasHtmlTags(head, 3)) return TEXT_MEDIA_TYPES.html;
  return TEXT_MEDIA_TYPES.plain;
}

/**
 * A doctype after optional whitespace, comments and an XML declaration. Comments one after
 * another are one `<!--…-->` with comments inside, so a single greedy comment matches the same
 * texts as `(?:<!--[\s\S]*?-->\s*)*` did, without that pattern's exponential backtracking over
 * where each of many comments ends.
 */
const HTML_DOCUMENT_START = /^\s*(?:<!--[\s\S]*-->\s*)?(?:<\?xml[^>]*>\s*)?<!doctype html/i;

/**
 * At least `atLeast` common HTML tags, each `<name …>` up to its first `>` (what
 * `/<\/?(?:p|…)\b[^>]*>/gi` counts, without its scan to the end of the text from every tag
 * that has no `>`).
 */
function hasHtmlTags(head: string, atLeast: number): boolean {
  const start = /<\/?(?:p|div|span|a|h[1-6]|table|tr|td|ul|li|br|body|head)\b/gi;
  let count = 0;
  for (let m = start.exec(head); m; m = start.exec(head)) {
    const close = head.indexOf(">", start.lastIndex);
    if (close === -1) return false; // no later tag has a `>` after it either
    if (++count >= atLeast) return true;
    start.lastIndex = close + 1;
  }
  return false;
}

function isPlausible(head: string, hint: string): boolean {
  switch (hint) {
    case TEXT_MEDIA_TYPES.html: {
      // A `<x` with a `>` after it, as /<[a-z!][^>]*>/i, without a scan to the end from every `<`.
      const lastClose = head.lastIndexOf(">");
      return lastClose > 0 && /<[a-z!]/i.test(head.slice(0, lastClose));
    }
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
  // Each scan stops at the next `[`, quote or line end: from every `[` of a run of them, every
  // unclosed target or every unclosed title, a scan to the end of the sample would be quadratic.
  link: /\[[^\]\n[]+\]\([^)\s[]+(?:[ \t]+"[^"\n]*")?\)/,
  // One line of a delimiter row: `\s` here would run across lines from every line start.
  table: /^\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)+\|?[ \t]*$/m,
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

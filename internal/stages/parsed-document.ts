/** The shape every parser returns, and the text clean-up they share. */

/** A heading with its level (1 = top). */
export interface Heading {
  level: number;
  text: string;
}

/** A table as rows of cell texts; the first row is the header row when the format has one. */
export interface Table {
  rows: string[][];
}

/** A hyperlink: target as written in the document, and its visible text. */
export interface Link {
  href: string;
  text: string;
}

/** Text and structure extracted from a document. */
export interface ParsedDocument {
  /** Plain text: blocks separated by blank lines, table cells by tabs. */
  text: string;
  headings: Heading[];
  tables: Table[];
  links: Link[];
  /** Pages in the document (paged formats only). */
  pageCount?: number;
  /** Pages whose text was extracted, when maxPages stopped before the end. */
  pagesParsed?: number;
}

/** Collapses runs of whitespace (HTML's rendering rule) and trims. */
export function collapseWhitespace(s: string): string {
  return s.replace(/\s+/g, " ").trim();
}

/** Normalises line endings, trims lines and keeps at most one blank line between blocks. */
export function tidyText(s: string): string {
  return s
    .replace(/\r\n?/g, "\n")
    .split("\n")
    .map((line) => line.replace(/[ \u00a0]+/g, " ").trim())
    .join("\n")
    .replace(/\n{3,}/g, "\n\n")
    .trim();
}

/** http(s)/mailto URLs written out in plain text, as links whose text is the URL. */
export function bareUrlLinks(text: string): Link[] {
  const links: Link[] = [];
  for (const m of text.matchAll(/\b(?:https?:\/\/|mailto:)[^\s<>"'()]+[^\s<>"'().,;:!?]/gi)) {
    links.push({ href: m[0], text: m[0] });
  }
  return links;
}

/**
 * `s` with every `<…>` tag replaced by `replacement`, as `s.replace(/<[^>]*>/g, replacement)`
 * does but in one pass: that regex scans to the end of the text from every `<` that has no
 * `>` after it, quadratic in a run of `<`.
 */
export function stripTags(s: string, replacement = ""): string {
  let out = "";
  let at = 0;
  for (let open = s.indexOf("<"); open !== -1; open = s.indexOf("<", at)) {
    const close = s.indexOf(">", open + 1);
    if (close === -1) break; // no `>` after this `<`, so none after any later one either
    out += s.slice(at, open) + replacement;
    at = close + 1;
  }
  return out + s.slice(at);
}

/**
 * `s` without its script and style elements, as
 * `s.replace(/<(script|style)\b[\s\S]*?<\/\1\s*>/gi, replacement)` does but in linear time: that
 * regex searches to the end of the text from every opening tag that is never closed.
 */
export function stripScriptsAndStyles(s: string, replacement = ""): string {
  const unclosed = new Set<string>();
  let out = "";
  let at = 0;
  const start = /<(script|style)\b/gi;
  for (let m = start.exec(s); m; m = start.exec(s)) {
    const name = m[1]!.toLowerCase();
    if (unclosed.has(name)) continue;
    const end = new RegExp(`</${name}\\s*>`, "gi");
    end.lastIndex = m.index + m[0].length;
    const close = end.exec(s);
    if (!close) {
      // Later openings of this element have no closing tag after them either.
      unclosed.add(name);
      continue;
    }
    out += s.slice(at, m.index) + replacement;
    at = close.index + close[0].length;
    start.lastIndex = at;
  }
  return out + s.slice(at);
}

/** A document with no structure. */
export function textOnly(text: string): ParsedDocument {
  return { text, headings: [], tables: [], links: [] };
}

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

/** A document with no structure. */
export function textOnly(text: string): ParsedDocument {
  return { text, headings: [], tables: [], links: [] };
}

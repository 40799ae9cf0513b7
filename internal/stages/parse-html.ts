/**
 * HTML → text and structure from a stream of tag and text events (html-stream.ts, on
 * htmlparser2's tokenizer; no DOM is built). Also parses the HTML that mammoth makes of a DOCX.
 */
import { streamHtml } from "./html-stream.ts";
import { collapseWhitespace, tidyText, type Heading, type Link, type ParsedDocument, type Table } from "./parsed-document.ts";

/** Elements whose content is never document text. */
const SKIPPED = new Set(["script", "style", "noscript", "template", "title", "svg", "math", "iframe", "object"]);
/** Elements that start a new block of text. */
const BLOCKS = new Set([
  "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figcaption", "figure", "footer",
  "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
  "section", "table", "ul", "caption", "details", "summary",
]);

/** Characters of visible text kept per link; a link's text is a label, the text has the rest. */
export const LINK_TEXT_LIMIT = 1_000;
/** Characters kept per table cell and per heading. */
export const CELL_TEXT_LIMIT = 10_000;
/** Links kept per document; later links are in the text only. */
export const LINK_LIMIT = 10_000;
/** Table cells kept per document, all tables together; later rows are in the text only. */
export const TABLE_CELL_LIMIT = 100_000;
/**
 * Tables nested deeper than this are not kept as tables: their text joins the enclosing cells.
 * Each piece of text goes to every open cell, so this bounds the work per piece of text.
 */
export const TABLE_DEPTH_LIMIT = 8;

interface OpenTable {
  rows: string[][];
  row: string[] | null;
  cell: string | null;
}

/**
 * Text (without scripts and styles), headings, tables (nested ones separately) and links.
 *
 * Hostile markup (thousands of unclosed links or nested tables) must not make the work or
 * memory grow faster than the input: links do not nest (an `<a>` ends the open one, as in
 * browsers), link, cell and heading text is capped (LINK_TEXT_LIMIT, CELL_TEXT_LIMIT), as are
 * the links and cells kept (LINK_LIMIT, TABLE_CELL_LIMIT) and the table depth tracked
 * (TABLE_DEPTH_LIMIT), and all structure text together never exceeds the document's length.
 */
export function parseHtml(html: string): ParsedDocument {
  const out: string[] = [];
  const headings: Heading[] = [];
  const tables: Table[] = [];
  const links: Link[] = [];
  let link: { href: string; text: string } | null = null;
  const openTables: OpenTable[] = [];
  /** `<table>`s open beyond TABLE_DEPTH_LIMIT: their rows and cells are not tracked. */
  let untrackedTables = 0;
  let cellsKept = 0;
  let heading: Heading | null = null;
  let skipDepth = 0;
  let preDepth = 0;
  // Nested tables copy text into every enclosing cell; this caps the copies in all.
  let structureBudget = html.length;

  /** `text` appended to `to`, cut at `limit` characters and at the structure budget. */
  const capped = (to: string, text: string, limit: number): string => {
    const room = Math.min(limit - to.length, structureBudget);
    if (room <= 0) return to;
    const piece = text.length > room ? text.slice(0, room) : text;
    structureBudget -= piece.length;
    return to + piece;
  };
  // Text also belongs to the open heading, link and every open cell (a nested table's text is
  // part of the enclosing cell too); a block or cell boundary is a word break there.
  const addToOpen = (text: string): void => {
    if (heading) heading.text = capped(heading.text, text, CELL_TEXT_LIMIT);
    if (link) link.text = capped(link.text, text, LINK_TEXT_LIMIT);
    for (const table of openTables) if (table.cell !== null) table.cell = capped(table.cell, text, CELL_TEXT_LIMIT);
  };
  const append = (text: string): void => {
    out.push(text);
    addToOpen(text);
  };
  const boundary = (separator: string): void => {
    out.push(separator);
    addToOpen(" ");
  };
  const endLink = (): void => {
    if (link && link.href && !/^javascript:/i.test(link.href) && links.length < LINK_LIMIT) {
      links.push({ href: link.href, text: collapseWhitespace(link.text) });
    }
    link = null;
  };
  const endCell = (table: OpenTable): void => {
    if (table.cell === null) return;
    if (table.row && cellsKept < TABLE_CELL_LIMIT) {
      table.row.push(collapseWhitespace(table.cell));
      cellsKept++;
    }
    table.cell = null;
  };
  /** The innermost tracked table, unless an untracked one is open inside it. */
  const trackedTable = (): OpenTable | undefined => (untrackedTables > 0 ? undefined : openTables.at(-1));
  const inCell = (): boolean => openTables.at(-1)?.cell != null;

  streamHtml(html, {
    onopentag(name, attrs) {
      if (SKIPPED.has(name)) skipDepth++;
      if (skipDepth > 0) return;
      const table = trackedTable();
      // Inside a cell a block only separates words: the row must stay on one text line.
      if (BLOCKS.has(name)) boundary(inCell() ? " " : "\n\n");
      switch (name) {
        case "br": append("\n"); break;
        case "pre": preDepth++; break;
        case "a":
          // Links do not nest: a new <a> ends the open one (HTML's parser does the same).
          endLink();
          if (attrs.href !== undefined) link = { href: attrs.href.trim(), text: "" };
          break;
        case "table":
          if (untrackedTables > 0 || openTables.length >= TABLE_DEPTH_LIMIT) untrackedTables++;
          else openTables.push({ rows: [], row: null, cell: null });
          break;
        case "tr":
          boundary("\n");
          if (table) {
            // A row left open (its </tr> not implied, e.g. under an unclosed <b>) ends here.
            endCell(table);
            if (table.row?.length) table.rows.push(table.row);
            table.row = [];
          }
          break;
        case "td": case "th":
          boundary("\t");
          if (table) { endCell(table); table.row ??= []; table.cell = ""; }
          break;
        case "img": if (attrs.alt) append(` ${attrs.alt} `); break;
        default:
          if (/^h[1-6]$/.test(name)) heading = { level: Number(name[1]), text: "" };
      }
    },
    ontext(text) {
      if (skipDepth === 0) append(preDepth > 0 ? text : text.replace(/\s+/g, " "));
    },
    onclosetag(name) {
      if (SKIPPED.has(name)) { skipDepth = Math.max(0, skipDepth - 1); return; }
      if (skipDepth > 0) return;
      const table = trackedTable();
      switch (name) {
        case "pre": preDepth = Math.max(0, preDepth - 1); break;
        case "a": endLink(); break;
        case "td": case "th":
          if (table) endCell(table);
          break;
        case "tr":
          if (table) {
            endCell(table);
            if (table.row?.length) table.rows.push(table.row);
            table.row = null;
          }
          break;
        case "table": {
          if (untrackedTables > 0) { untrackedTables--; break; }
          const done = openTables.pop();
          if (done) {
            endCell(done);
            if (done.row?.length) done.rows.push(done.row);
            if (done.rows.length) tables.push({ rows: done.rows });
          }
          break;
        }
        default:
          if (heading && name === `h${heading.level}`) {
            const text = collapseWhitespace(heading.text);
            if (text) headings.push({ level: heading.level, text });
            heading = null;
          }
      }
      if (BLOCKS.has(name)) boundary(inCell() ? " " : "\n\n");
    },
  });
  return { text: tidyText(tidyTabs(out.join(""))), headings, tables, links };
}

/**
 * A run of spaces and tabs that holds a tab becomes one tab, and a tab at the start or end of a
 * line goes. A single pass: the regex `[ \t]*\t[ \t]*` backtracks over every run of spaces it
 * starts in, quadratic in a long run (a `<pre>` of spaces).
 */
export function tidyTabs(text: string): string {
  return text
    .replace(/[ \t]+/g, (run) => (run.includes("\t") ? "\t" : run))
    .replace(/^\t|\t$/gm, "");
}

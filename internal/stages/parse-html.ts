/**
 * HTML → text and structure with htmlparser2's streaming parser (no DOM is built). Also parses
 * the HTML that mammoth makes of a DOCX.
 */
import { Parser } from "htmlparser2";
import { collapseWhitespace, tidyText, type Heading, type Link, type ParsedDocument, type Table } from "./parsed-document.ts";

/** Elements whose content is never document text. */
const SKIPPED = new Set(["script", "style", "noscript", "template", "title", "svg", "math", "iframe", "object"]);
/** Elements that start a new block of text. */
const BLOCKS = new Set([
  "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "figcaption", "figure", "footer",
  "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre",
  "section", "table", "ul", "caption", "details", "summary",
]);

interface OpenTable {
  rows: string[][];
  row: string[] | null;
  cell: string | null;
}

/** Text (without scripts and styles), headings, tables (nested ones separately) and links. */
export function parseHtml(html: string): ParsedDocument {
  const out: string[] = [];
  const headings: Heading[] = [];
  const tables: Table[] = [];
  const links: Link[] = [];
  const openLinks: { href: string; text: string }[] = [];
  const openTables: OpenTable[] = [];
  let heading: Heading | null = null;
  let skipDepth = 0;
  let preDepth = 0;

  // Text also belongs to every open heading, link and cell (a nested table's text is part of
  // the enclosing cell too); a block or cell boundary is a word break there.
  const addToOpen = (text: string): void => {
    if (heading) heading.text += text;
    for (const link of openLinks) link.text += text;
    for (const table of openTables) if (table.cell !== null) table.cell += text;
  };
  const append = (text: string): void => {
    out.push(text);
    addToOpen(text);
  };
  const boundary = (separator: string): void => {
    out.push(separator);
    addToOpen(" ");
  };

  const parser = new Parser(
    {
      onopentag(name, attrs) {
        if (SKIPPED.has(name)) skipDepth++;
        if (skipDepth > 0) return;
        const table = openTables.at(-1);
        // Inside a cell a block only separates words: the row must stay on one text line.
        if (BLOCKS.has(name)) boundary(table?.cell != null ? " " : "\n\n");
        switch (name) {
          case "br": append("\n"); break;
          case "pre": preDepth++; break;
          case "a": if (attrs.href !== undefined) openLinks.push({ href: attrs.href.trim(), text: "" }); break;
          case "table": openTables.push({ rows: [], row: null, cell: null }); break;
          case "tr": boundary("\n"); if (table) table.row = []; break;
          case "td": case "th":
            boundary("\t");
            if (table) { table.row ??= []; table.cell = ""; }
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
        const table = openTables.at(-1);
        switch (name) {
          case "pre": preDepth = Math.max(0, preDepth - 1); break;
          case "a": {
            const link = openLinks.pop();
            if (link && link.href && !/^javascript:/i.test(link.href)) {
              links.push({ href: link.href, text: collapseWhitespace(link.text) });
            }
            break;
          }
          case "td": case "th":
            if (table?.cell != null) { table.row?.push(collapseWhitespace(table.cell)); table.cell = null; }
            break;
          case "tr":
            if (table?.row?.length) table.rows.push(table.row);
            if (table) table.row = null;
            break;
          case "table": {
            const done = openTables.pop();
            if (done?.rows.length) tables.push({ rows: done.rows });
            break;
          }
          default:
            if (heading && name === `h${heading.level}`) {
              const text = collapseWhitespace(heading.text);
              if (text) headings.push({ level: heading.level, text });
              heading = null;
            }
        }
        if (BLOCKS.has(name)) boundary(openTables.at(-1)?.cell != null ? " " : "\n\n");
      },
    },
    { decodeEntities: true, lowerCaseTags: true, lowerCaseAttributeNames: true },
  );
  parser.write(html);
  parser.end();
  return { text: tidyText(out.join("").replace(/[ \t]*\t[ \t]*/g, "\t").replace(/^\t|\t$/gm, "")), headings, tables, links };
}

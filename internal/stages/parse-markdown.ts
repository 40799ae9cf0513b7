/** Markdown → text and structure from marked's lexer tokens (no HTML is rendered). */
import { decodeHTML } from "entities";
import { marked, type Token, type Tokens } from "marked";
import { PermanentStageError } from "./errors.ts";
import { stripScriptsAndStyles, stripTags, tidyText, type Heading, type Link, type ParsedDocument, type Table } from "./parsed-document.ts";

/** Headings (ATX and setext), GFM tables, inline and reference links, and the plain text. */
export function parseMarkdown(markdown: string): ParsedDocument {
  const headings: Heading[] = [];
  const tables: Table[] = [];
  const links: Link[] = [];

  // Inline tokens to plain text, recording links on the way.
  const inline = (tokens: readonly Token[] | undefined): string => {
    let s = "";
    for (const tok of tokens ?? []) {
      switch (tok.type) {
        case "link": {
          const text = inline(tok.tokens);
          links.push({ href: tok.href, text: text.trim() });
          s += text;
          break;
        }
        case "image": s += tok.text; break;
        case "br": s += "\n"; break;
        case "html": s += stripTags(tok.text); break;
        case "codespan": case "escape": s += tok.text; break;
        case "text": s += "tokens" in tok && tok.tokens ? inline(tok.tokens) : decodeHTML(tok.text); break;
        default:
          s += "tokens" in tok && Array.isArray(tok.tokens) ? inline(tok.tokens) : decodeHTML(String((tok as { text?: unknown }).text ?? ""));
      }
    }
    return s;
  };

  const block = (tokens: readonly Token[]): string => {
    const parts: string[] = [];
    for (const tok of tokens) {
      switch (tok.type) {
        case "heading": {
          const text = inline(tok.tokens).trim();
          headings.push({ level: tok.depth, text });
          parts.push(text);
          break;
        }
        case "paragraph": parts.push(inline(tok.tokens)); break;
        case "text": parts.push("tokens" in tok && tok.tokens ? inline(tok.tokens) : decodeHTML(tok.text)); break;
        case "code": parts.push(tok.text); break;
        case "blockquote": parts.push(block(tok.tokens ?? [])); break;
        case "list": parts.push((tok as Tokens.List).items.map((item) => block(item.tokens)).join("\n")); break;
        case "table": {
          const t = tok as Tokens.Table;
          const rows = [t.header, ...t.rows].map((row) => row.map((cell) => inline(cell.tokens).trim()));
          tables.push({ rows });
          parts.push(rows.map((r) => r.join("\t")).join("\n"));
          break;
        }
        case "html": parts.push(stripTags(stripScriptsAndStyles(tok.text))); break;
        default: break; // space, hr, def: no text
      }
    }
    return parts.filter((p) => p.trim() !== "").join("\n\n");
  };

  let text: string;
  try {
    text = tidyText(block(marked.lexer(markdown, { gfm: true })));
  } catch (cause) {
    // marked (and block/inline here) recurse per level of nesting: ">>>>…" or "- - - …"
    // thousands deep overflows the stack, the same way on every attempt.
    if (!(cause instanceof RangeError)) throw cause;
    throw new PermanentStageError("corrupt_document", "the Markdown document is nested too deeply to parse", { cause });
  }
  return { text, headings, tables, links };
}

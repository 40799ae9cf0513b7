/** Markdown → text and structure from marked's lexer tokens (no HTML is rendered). */
import { decodeHTML } from "entities";
import { Marked, type Token, type Tokens } from "marked";
import { PermanentStageError } from "./errors.ts";
import { bareUrlLinks, stripScriptsAndStyles, stripTags, tidyText, type Heading, type Link, type ParsedDocument, type Table } from "./parsed-document.ts";

/**
 * marked with GFM, but without its bare-URL tokenizer: that one trims a match's trailing
 * punctuation one character per pass of a regex over the whole match, quadratic in a long run
 * ("http://a" × 5000 and a run of dots: 10 s). Bare URLs are found in the text instead
 * (bareUrlLinks, one linear regex).
 */
const markdown = new Marked({ gfm: true, tokenizer: { url: () => undefined } });

/** Lines holding more container markers than this (`>`, `- `, `1. `) are refused: see checkNesting. */
export const MARKDOWN_NESTING_LIMIT = 100;

/** Headings (ATX and setext), GFM tables, inline and reference links, and the plain text. */
export function parseMarkdown(source: string): ParsedDocument {
  const headings: Heading[] = [];
  const tables: Table[] = [];
  const links: Link[] = [];

  // Inline tokens to plain text, recording links on the way.
  const inline = (tokens: readonly Token[] | undefined, inLink = false): string => {
    let s = "";
    for (const tok of tokens ?? []) {
      switch (tok.type) {
        case "link": {
          const text = inline(tok.tokens, true);
          links.push({ href: tok.href, text: text.trim() });
          s += text;
          break;
        }
        case "image": s += tok.text; break;
        case "br": s += "\n"; break;
        case "html": s += stripTags(tok.text); break;
        case "codespan": case "escape": s += tok.text; break;
        case "text": {
          if ("tokens" in tok && tok.tokens) {
            s += inline(tok.tokens, inLink);
            break;
          }
          const text = decodeHTML(tok.text);
          if (!inLink) links.push(...bareUrlLinks(text));
          s += text;
          break;
        }
        default:
          s += "tokens" in tok && Array.isArray(tok.tokens) ? inline(tok.tokens, inLink) : decodeHTML(String((tok as { text?: unknown }).text ?? ""));
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
    checkNesting(source);
    text = tidyText(block(markdown.lexer(source)));
  } catch (cause) {
    // marked (and block/inline here) recurse per level of nesting: ">>>>…" or "- - - …"
    // thousands deep overflows the stack, the same way on every attempt.
    if (!(cause instanceof RangeError)) throw cause;
    throw new PermanentStageError("corrupt_document", "the Markdown document is nested too deeply to parse", { cause });
  }
  return { text, headings, tables, links };
}

/**
 * marked lexes each level of a nested blockquote or list again, and recurses per level: a line
 * of thousands of `> ` or `- ` costs the text's length times its depth and then overflows the
 * stack. Such a line is refused up front, as the overflow would refuse it anyway. A line of
 * only `-`, `*`, `_` and spaces is a thematic break, not nesting.
 */
function checkNesting(source: string): void {
  let depth = 0;
  let lineStart = true;
  const nested = (at: number): void => {
    if (++depth <= MARKDOWN_NESTING_LIMIT) return;
    if (!isThematicBreak(source, at)) {
      throw new PermanentStageError("corrupt_document", "the Markdown document is nested too deeply to parse");
    }
    lineStart = false; // the rest of this line is the same break: not looked at again
  };
  for (let i = 0; i < source.length; i++) {
    const c = source[i]!;
    if (c === "\n") { depth = 0; lineStart = true; continue; }
    if (!lineStart || c === " " || c === "\t") continue;
    const next = source[i + 1];
    if (c === ">" || ((c === "-" || c === "*" || c === "+") && (next === " " || next === "\t"))) {
      nested(i);
      continue;
    }
    let j = i;
    while (j < source.length && j - i < 9 && source[j]! >= "0" && source[j]! <= "9") j++;
    if (j > i && (source[j] === "." || source[j] === ")") && (source[j + 1] === " " || source[j + 1] === "\t")) {
      nested(i);
      i = j;
      continue;
    }
    lineStart = false;
  }
}

/** Whether the line around `at` holds only `-`, `*`, `_`, spaces and tabs. */
function isThematicBreak(source: string, at: number): boolean {
  const start = source.lastIndexOf("\n", at) + 1;
  const end = source.indexOf("\n", at);
  return /^[-*_ \t]*$/.test(source.slice(start, end === -1 ? source.length : end));
}

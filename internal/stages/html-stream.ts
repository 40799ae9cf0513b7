/**
 * HTML as a stream of open-tag, text and close-tag events, in time linear in the input.
 *
 * htmlparser2's Parser keeps its open elements in an array it grows with unshift and searches
 * with indexOf on every close tag, so a document of unclosed elements costs O(depth) per tag:
 * 600 KB of `<b>` takes seconds, a few MB hours. This drives htmlparser2's Tokenizer (a linear
 * state machine) with the same tag-balancing rules, on a stack that is pushed and popped at its
 * end and a count of open elements per name, so every event costs O(1) amortised (each element
 * is pushed once and popped once).
 */
import { Tokenizer, type TokenizerCallbacks } from "htmlparser2";

/** What streamHtml reports; every opened element is closed exactly once (at the end if not before). */
export interface HtmlHandler {
  onopentag(name: string, attrs: Readonly<Record<string, string>>): void;
  ontext(text: string): void;
  onclosetag(name: string): void;
}

// The rules below are htmlparser2 12's (Parser.js), so its users see the same events.
const VOID = new Set([
  "area", "base", "basefont", "br", "col", "command", "embed", "frame", "hr", "img", "input", "isindex",
  "keygen", "link", "meta", "param", "source", "track", "wbr",
]);
const FORM_TAGS = new Set(["input", "option", "optgroup", "select", "button", "datalist", "textarea"]);
const P = new Set(["p"]);
const HEADINGS = new Set(["h1", "h2", "h3", "h4", "h5", "h6", "p"]);
const TABLE_SECTIONS = new Set(["thead", "tbody"]);
const DD_DT = new Set(["dd", "dt"]);
const RT_RP = new Set(["rt", "rp"]);
/** Opening the key closes the current element while it is one of the value's (the top only, repeatedly). */
const OPEN_IMPLIES_CLOSE = new Map<string, ReadonlySet<string>>([
  ["tr", new Set(["tr", "th", "td"])], ["th", new Set(["th"])], ["td", new Set(["thead", "th", "td"])],
  ["body", new Set(["head", "link", "script"])], ["a", new Set(["a"])], ["li", new Set(["li"])], ["p", P],
  ["h1", HEADINGS], ["h2", HEADINGS], ["h3", HEADINGS], ["h4", HEADINGS], ["h5", HEADINGS], ["h6", HEADINGS],
  ["select", FORM_TAGS], ["input", FORM_TAGS], ["output", FORM_TAGS], ["button", FORM_TAGS],
  ["datalist", FORM_TAGS], ["textarea", FORM_TAGS], ["option", new Set(["option"])],
  ["optgroup", new Set(["optgroup", "option"])], ["dd", DD_DT], ["dt", DD_DT],
  ...["address", "article", "aside", "blockquote", "details", "div", "dl", "fieldset", "figcaption", "figure",
    "footer", "form", "header", "hr", "main", "nav", "ol", "pre", "section", "table", "ul"].map((n) => [n, P] as const),
  ["rt", RT_RP], ["rp", RT_RP], ["tbody", TABLE_SECTIONS], ["tfoot", TABLE_SECTIONS],
]);
/** Elements whose content is SVG or MathML, where `<x/>` closes itself and CDATA is text. */
const FOREIGN = new Set(["svg", "math"]);

/** Streams the events of an HTML document to `handler` (entities decoded, names lowercased). */
export function streamHtml(html: string, handler: HtmlHandler): void {
  const stack: string[] = [];
  const openCount = new Map<string, number>();
  let foreignDepth = 0;
  let tagname = "";
  let attribs: Record<string, string> | null = null;
  let attribname = "";
  let attribvalue = "";

  const isOpen = (name: string): boolean => (openCount.get(name) ?? 0) > 0;
  const push = (name: string): void => {
    stack.push(name);
    openCount.set(name, (openCount.get(name) ?? 0) + 1);
    if (FOREIGN.has(name)) foreignDepth++;
  };
  const pop = (): void => {
    const name = stack.pop()!;
    openCount.set(name, openCount.get(name)! - 1);
    if (FOREIGN.has(name)) foreignDepth--;
    handler.onclosetag(name);
  };
  const readName = (start: number, end: number): string => {
    const name = html.slice(start, end).toLowerCase();
    return name === "image" && foreignDepth === 0 ? "img" : name;
  };
  /** Emits the open tag read so far; `selfClosing` closes it at once. */
  const endOpenTag = (selfClosing: boolean): void => {
    const name = tagname;
    tagname = "";
    if (!attribs) return;
    const attrs = attribs;
    attribs = null;
    handler.onopentag(name, attrs);
    if (VOID.has(name) || selfClosing) handler.onclosetag(name);
    else push(name);
  };

  const callbacks: TokenizerCallbacks = {
    onopentagname(start, end) {
      tagname = readName(start, end);
      // The spec ignores a second <form> while one is open.
      if (tagname === "form" && isOpen("form")) {
        attribs = null;
        return;
      }
      const implied = OPEN_IMPLIES_CLOSE.get(tagname);
      if (implied) while (stack.length > 0 && implied.has(stack.at(-1)!)) pop();
      attribs = Object.create(null) as Record<string, string>;
    },
    onattribname(start, end) {
      attribname = html.slice(start, end).toLowerCase();
      attribvalue = "";
    },
    onattribdata(start, end) {
      attribvalue += html.slice(start, end);
    },
    onattribentity(codepoint) {
      attribvalue += String.fromCodePoint(codepoint);
    },
    onattribend() {
      if (attribs && !Object.hasOwn(attribs, attribname)) attribs[attribname] = attribvalue;
      attribvalue = "";
    },
    onopentagend() {
      endOpenTag(false);
    },
    onselfclosingtag() {
      // HTML ignores the slash, except on SVG and MathML elements.
      endOpenTag(foreignDepth > 0 || FOREIGN.has(tagname));
    },
    onclosetag(start, end) {
      const name = readName(start, end);
      if (VOID.has(name)) {
        if (name === "br") {
          handler.onopentag("br", {});
          handler.onclosetag("br");
        }
      } else if (isOpen(name)) {
        while (stack.at(-1) !== name) pop();
        pop();
      } else if (name === "p") {
        // A </p> without a <p> is an empty paragraph.
        handler.onopentag("p", {});
        handler.onclosetag("p");
      }
    },
    ontext(start, end) {
      handler.ontext(html.slice(start, end));
    },
    ontextentity(codepoint) {
      handler.ontext(String.fromCodePoint(codepoint));
    },
    oncdata(start, end, offset) {
      if (foreignDepth > 0) handler.ontext(html.slice(start, end - offset));
    },
    oncomment() {},
    ondeclaration() {},
    onprocessinginstruction() {},
    onend() {
      while (stack.length > 0) pop();
    },
    isInForeignContext: () => foreignDepth > 0,
  };
  const tokenizer = new Tokenizer({ decodeEntities: true }, callbacks);
  tokenizer.write(html);
  tokenizer.end();
}

/** Plain text: tidied text, and the URLs written in it as links. */
import { bareUrlLinks, textOnly, tidyText, type ParsedDocument } from "./parsed-document.ts";

/** Plain text has no headings or tables; bare URLs become links. */
export function parseText(source: string): ParsedDocument {
  const text = tidyText(source);
  return { ...textOnly(text), links: bareUrlLinks(text) };
}

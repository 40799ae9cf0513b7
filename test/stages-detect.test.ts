import t from "tap";
import { detectStage, parseStage } from "../internal/stages/index.ts";
import { bcp47Tag } from "../internal/stages/language.ts";
import { PROSE } from "./stages-fixtures.ts";

const ctx = () => ({ signal: new AbortController().signal });
const utf8 = (s: string) => new TextEncoder().encode(s);
const typeOf = async (text: string, filename?: string, mediaTypeHint?: string) =>
  (await detectStage({ bytes: utf8(text), filename, mediaTypeHint }, { skipLanguage: true }, ctx())).mediaType;

t.test("detect - self-identifying text formats win over the filename", async (t) => {
  t.equal(await typeOf('{"a": [1, 2]}', "notes.txt"), "application/json");
  t.equal(await typeOf("<!doctype html><html><body><p>x</p></body></html>", "page.md"), "text/html");
  t.equal(await typeOf("<!-- generated -->\n<!DOCTYPE html>\n<title>x</title>"), "text/html");
  t.equal(await typeOf('{"a": 1', "broken.json"), "text/plain", "JSON that does not parse is not JSON");
});

t.test("detect - content sniffing without hints", async (t) => {
  t.equal(await typeOf("# Title\n\nSome text with a [link](https://x.org).\n"), "text/markdown");
  t.equal(await typeOf("id,name,score\n1,Ada,3\n2,Linus,4\n"), "text/csv");
  t.equal(await typeOf("id\tname\n1\tAda\n2\tLinus\n"), "text/tab-separated-values");
  t.equal(await typeOf(PROSE), "text/plain", "prose with commas is not CSV");
  t.equal(await typeOf("Shopping:\n- eggs\n- milk\n"), "text/plain", "a dash list alone is not Markdown");
  t.equal(await typeOf("<div><p>one</p><p>two</p></div>"), "text/html", "an HTML fragment");
});

t.test("detect - the filename or declared type breaks ties", async (t) => {
  t.equal(await typeOf("Shopping:\n- eggs\n- milk\n", "list.md"), "text/markdown");
  t.equal(await typeOf("a,b\n"), "text/plain");
  t.equal(await typeOf("a,b\n", "pair.csv"), "text/csv");
  t.equal(await typeOf("a,b\n", undefined, "text/csv; charset=utf-8"), "text/csv");
  t.equal(await typeOf("no delimiters here", "odd.csv"), "text/plain", "a hint the content contradicts is ignored");
  t.equal(await typeOf("# Title\n\nText [l](https://x.org)", "notes.txt"), "text/plain", "a .txt may contain # characters");
});

t.test("detect - encodings: UTF-8, legacy single-byte, UTF-16 with BOM", async (t) => {
  const french = "Le café est très apprécié à Paris, où les garçons servent des crèmes brûlées. ".repeat(4);
  const utf = await detectStage({ bytes: utf8(french) }, {}, ctx());
  t.same(utf, { mediaType: "text/plain", encoding: "utf-8", language: "fra" });

  const legacy = new Uint8Array(Buffer.from(french, "latin1"));
  const detected = await detectStage({ bytes: legacy }, {}, ctx());
  t.match(detected.encoding, /^(iso-8859-1|windows-1252)$/);
  t.equal(detected.language, "fra");
  t.equal((await parseStage({ bytes: legacy, ...detected }, {}, ctx())).text, french.trim(), "decoded correctly");

  const utf16 = new Uint8Array([0xff, 0xfe, ...Buffer.from(french, "utf16le")]);
  const wide = await detectStage({ bytes: utf16 }, {}, ctx());
  t.equal(wide.encoding, "utf-16le");
  t.equal((await parseStage({ bytes: utf16, ...wide }, {}, ctx())).text, french.trim());
});

t.test("detect - language from a text sample, markup ignored, skippable", async (t) => {
  const html = `<html><head><style>.a{}</style></head><body><p>${PROSE}</p></body></html>`;
  t.equal((await detectStage({ bytes: utf8(html) }, {}, ctx())).language, "eng");
  t.notOk("language" in (await detectStage({ bytes: utf8(PROSE) }, { skipLanguage: true }, ctx())));
  t.notOk("language" in (await detectStage({ bytes: utf8("ok") }, {}, ctx())), "too short to tell");
});

t.test("language codes - franc's ISO 639-3 becomes the BCP 47 tag results promise", async (t) => {
  t.equal(bcp47Tag("eng"), "en");
  t.equal(bcp47Tag("deu"), "de");
  t.equal(bcp47Tag("cmn"), "zh", "a macrolanguage member maps to its macrolanguage's tag");
  t.equal(bcp47Tag("en"), "en", "already a tag: unchanged (results stored before the mapping)");
  t.equal(bcp47Tag("zlm"), "zlm", "no two-letter form: the three-letter code is the tag");
  t.equal(bcp47Tag("not a tag"), "not a tag", "never throws");
});

/**
 * Hostile documents: inputs built to make a stage's work grow faster than the document (a
 * quadratic loop, a backtracking regex, unbounded copies) or to inflate far past their size.
 * Each test's timeout is a hang guard, not a speed assertion: with the fixes each input takes
 * well under a second; before them each ran for minutes or ran out of memory.
 */
import t from "tap";
import { detectStage, DOCX, findPii, parseStage, PermanentStageError, type ParseOptions } from "../internal/stages/index.ts";
import { CELL_TEXT_LIMIT, LINK_LIMIT, LINK_TEXT_LIMIT, TABLE_CELL_LIMIT, TABLE_DEPTH_LIMIT, tidyTabs } from "../internal/stages/parse-html.ts";
import { deflateStoredThenPacked, docxEntries, makeDocx, makeFlatePdf, makePdf, makeZip, PROSE } from "./stages-fixtures.ts";

const ctx = () => ({ signal: new AbortController().signal });
const HANG_GUARD = { timeout: 90_000 };
const parse = (text: string, mediaType: string) => parseStage({ bytes: new TextEncoder().encode(text), mediaType }, {}, ctx());
const parseBytes = (bytes: Uint8Array, mediaType: string, options: ParseOptions = {}) => parseStage({ bytes, mediaType }, options, ctx());
/** The error a promise rejects with (undefined if it resolves). */
const caught = (p: Promise<unknown>): Promise<unknown> => p.then(() => undefined, (e: unknown) => e);

t.test("pii - 550,000 emails are each found once, without comparing every pair", HANG_GUARD, async (t) => {
  const findings = findPii("a@b.cc ".repeat(550_000), "US");
  t.equal(findings.length, 550_000);
  t.ok(findings.every((f, i) => f.kind === "email" && f.start === i * 7 && f.end === i * 7 + 6), "in order, one per address");
});

t.test("pii - overlapping findings still go to the most specific kind", async (t) => {
  // The IBAN's digits also pass as a card number; the card holds a phone-like run; the email
  // ends where the phone number starts.
  const text = "DE89 3704 0044 0532 0130 00 | 4111 1111 1111 1111 | jane@example.com (415) 555-0132";
  t.same(findPii(text, "US").map((f) => `${f.kind}:${text.slice(f.start, f.end)}`), [
    "iban:DE89 3704 0044 0532 0130 00",
    "card:4111 1111 1111 1111",
    "email:jane@example.com",
    "phone:(415) 555-0132",
  ]);
});

t.test("html - links left open under <b> do not nest: bounded links, bounded link text", HANG_GUARD, async (t) => {
  // Before: text went to every open link (50,000 × 20,000 appends) and the parser's element
  // stack was searched and shifted on every tag.
  const parsed = await parse("<html>" + "<a href=x><b>".repeat(5e4) + "y<i>".repeat(2e4), "text/html");
  t.equal(parsed.links.length, LINK_LIMIT, "links past the limit are in the text only");
  t.ok(parsed.links.every((l) => l.text.length <= LINK_TEXT_LIMIT));
  t.equal(parsed.text, "y".repeat(2e4));
});

t.test("html - a link ends where the next one starts, as in a browser", async (t) => {
  const parsed = await parse("<p><a href=/1>one <b>bold<a href=/2>two</a> after</b></a></p>", "text/html");
  t.same(parsed.links, [{ href: "/1", text: "one bold" }, { href: "/2", text: "two" }]);
  t.equal(parsed.text, "one boldtwo after");
});

t.test("html - 300,000 unclosed elements and as many stray end tags parse in linear time", HANG_GUARD, async (t) => {
  const parsed = await parse("<p>start" + "<b>".repeat(3e5) + "</i>".repeat(3e5) + "end", "text/html");
  t.equal(parsed.text, "startend");
});

t.test("html - nested tables: depth tracked, cell text capped, no copy per open cell", HANG_GUARD, async (t) => {
  // Before: the 500 KB text went into each of the 2,000 open cells (1 GB of strings).
  const parsed = await parse("<table><tr><td>x".repeat(2000) + "word ".repeat(1e5), "text/html");
  t.equal(parsed.tables.length, TABLE_DEPTH_LIMIT, "deeper tables are text of the enclosing cells");
  const cells = parsed.tables.flatMap((table) => table.rows.flat());
  t.equal(cells.length, TABLE_DEPTH_LIMIT);
  t.ok(cells.every((c) => c.length <= CELL_TEXT_LIMIT));
  t.match(cells[0], /^x x x .* word word/);
});

t.test("html - at most TABLE_CELL_LIMIT cells are kept, and a heading's text is capped", HANG_GUARD, async (t) => {
  const parsed = await parse("<table>" + "<tr><td>a".repeat(TABLE_CELL_LIMIT + 50_000) + "</table><h1>" + "title ".repeat(5000), "text/html");
  t.equal(parsed.tables[0]?.rows.length, TABLE_CELL_LIMIT, "later rows are in the text only");
  t.equal(parsed.text.match(/^a$/gm)?.length, TABLE_CELL_LIMIT + 50_000, "every row is in the text");
  t.ok(parsed.headings[0]!.text.length <= CELL_TEXT_LIMIT);
});

t.test("html - cells of a row left open are kept when the next row starts", async (t) => {
  const parsed = await parse("<table><tr><td><b>a<tr><td>b</td></tr></table>", "text/html");
  t.same(parsed.tables, [{ rows: [["a"], ["b"]] }]);
});

t.test("html - a <pre> of a million spaces is tidied in linear time", HANG_GUARD, async (t) => {
  // /[ \t]*\t[ \t]*/g tried every position of the run and backtracked over the rest of it.
  const parsed = await parse("<pre>" + " ".repeat(1e6) + "x</pre>", "text/html");
  t.equal(parsed.text, "x");
  t.equal(tidyTabs("a \t b\t\t c\n\tx\t\ny  z"), "a\tb\tc\nx\ny  z", "runs with a tab become one tab; tabs at line ends go");
});

t.test("docx - a part that inflates past maxInflatedBytes is document_too_large", async (t) => {
  const limit = 1024 * 1024;
  const honest = makeZip(docxEntries(Buffer.alloc(4 * limit, "a")));
  t.ok(honest.length < 64 * 1024, "a small zip");
  const err = await caught(parseBytes(honest, DOCX, { maxInflatedBytes: limit }));
  t.type(err, PermanentStageError);
  t.match(err, { code: "document_too_large" }, "refused from the central directory's sizes");

  // A zip bomb's headers claim a small size: the inflating is stopped, not trusted.
  const lying = makeZip(docxEntries(Buffer.alloc(4 * limit, "a"), 1000));
  const lie = await caught(parseBytes(lying, DOCX, { maxInflatedBytes: limit }));
  t.type(lie, PermanentStageError);
  t.match(lie, { code: "document_too_large" }, "refused while inflating");

  const fine = await parseBytes(makeZip(docxEntries("Small and honest.")), DOCX, { maxInflatedBytes: limit });
  t.equal(fine.text, "Small and honest.", "the same zip layout under the limit parses");
  const real = await makeDocx();
  t.match(await caught(parseBytes(real, DOCX, { maxInflatedBytes: 1000 })), { code: "document_too_large" }, "the limit counts every part read");
});

t.test("docx - a zip with more entries than a document has is document_too_large", async (t) => {
  const entries = [...docxEntries("x"), ...Array.from({ length: 10_001 }, (_, i) => ({ name: `junk/${i}`, data: Buffer.alloc(0) }))];
  t.match(await caught(parseBytes(makeZip(entries), DOCX)), { code: "document_too_large" });
});

t.test("pdf - a Flate stream that inflates past maxInflatedBytes is document_too_large", async (t) => {
  const limit = 1024 * 1024;
  const zeros = Buffer.alloc(8 * limit);
  const bomb = makeFlatePdf(zeros);
  t.ok(bomb.length < 64 * 1024, "a small PDF");
  const err = await caught(parseBytes(bomb, "application/pdf", { maxInflatedBytes: limit }));
  t.type(err, PermanentStageError);
  t.match(err, { code: "document_too_large" });
  t.match(await caught(parseBytes(makeFlatePdf(zeros, 2), "application/pdf", { maxInflatedBytes: limit })), { code: "document_too_large" },
    "Flate inside Flate is inflated and counted too");

  // Deflate data may hold the bytes "endstream" (here in a stored block); PDF.js reads on by /Length.
  const hidden = makeFlatePdf(await deflateStoredThenPacked(Buffer.from("q\nendstream\nQ\n"), zeros), 0);
  t.ok(hidden.length < 64 * 1024 && hidden.indexOf("endstream") < hidden.lastIndexOf("endstream"), "a small PDF with an early endstream");
  t.match(await caught(parseBytes(hidden, "application/pdf", { maxInflatedBytes: limit })), { code: "document_too_large" },
    "a stream is inflated to where its deflate data ends, not to the first endstream");

  const page = Buffer.from("BT /F1 12 Tf 72 712 Td (Hello) Tj ET");
  t.equal((await parseBytes(makeFlatePdf(page), "application/pdf", { maxInflatedBytes: limit })).pageCount, 1, "the same layout under the limit parses");
  const real = await makePdf([PROSE]);
  t.match(await caught(parseBytes(real, "application/pdf", { maxInflatedBytes: 100 })), { code: "document_too_large" }, "a real PDF's streams count");
  t.equal((await parseBytes(real, "application/pdf")).pageCount, 1, "the default limit leaves real PDFs alone");
});

t.test("markdown - nesting thousands deep is a permanent corrupt_document, not a stack overflow", HANG_GUARD, async (t) => {
  for (const source of ["> ".repeat(5e4) + "x", "- ".repeat(5e4) + "x", "1. ".repeat(3e4) + "x"]) {
    const err = await caught(parse(source, "text/markdown"));
    t.type(err, PermanentStageError);
    t.match(err, { code: "corrupt_document" });
  }
  const rule = await parse("text\n\n" + "- ".repeat(500) + "\n\nmore", "text/markdown");
  t.equal(rule.text, "text\n\nmore", "a long thematic break is no nesting");
});

t.test("markdown - bare URLs and HTML blocks in linear time; bare URLs are still links", HANG_GUARD, async (t) => {
  // marked's URL tokenizer trimmed trailing punctuation one character per regex pass.
  const urls = await parse("http://a".repeat(2e4) + ".".repeat(16e4), "text/markdown");
  t.equal(urls.links.length, 1);
  const tags = await parse("<div>\n" + "<".repeat(4e5), "text/markdown");
  t.equal(tags.text, "<".repeat(4e5), "a `<` without a `>` is text");
  const md = await parse("See https://example.org/a, or [the guide](https://example.org/b).", "text/markdown");
  t.same(md.links, [{ href: "https://example.org/a", text: "https://example.org/a" }, { href: "https://example.org/b", text: "the guide" }]);
});

t.test("detect - comments before a doctype are matched without exponential backtracking", HANG_GUARD, async (t) => {
  const typeOf = async (text: string) => (await detectStage({ bytes: new TextEncoder().encode(text) }, { skipLanguage: true }, ctx())).mediaType;
  t.equal(await typeOf("<!-- -->".repeat(4000) + "x"), "text/plain");
  t.equal(await typeOf("<!-- a -->\n<!-- b --> <!DOCTYPE html><p>x"), "text/html");
  t.equal(await typeOf("[".repeat(6e4) + "\n" + "\n".repeat(4000)), "text/plain");
});

t.test("json - records that share few keys are no table (n records would make n² cells)", HANG_GUARD, async (t) => {
  const sparse = JSON.stringify(Array.from({ length: 5000 }, (_, i) => ({ [`k${i}`]: i })));
  t.same((await parse(sparse, "application/json")).tables, []);
  const dense = await parse('[{"id":1,"name":"a"},{"id":2,"extra":true}]', "application/json");
  t.same(dense.tables, [{ rows: [["id", "name", "extra"], ["1", "a", ""], ["2", "", "true"]] }], "half-filled tables stay tables");
});

import t from "tap";
import {
  detectStage, DOCX, enrichStage, ingestStage, outputStage, parseStage, PermanentStageError, type EnrichOptions,
  type IngestSource, type OutputResult, type ParseOptions,
} from "../internal/stages/index.ts";
import { makeDocx, makePdf, makePng, PROSE } from "./stages-fixtures.ts";

const ctx = () => ({ signal: new AbortController().signal });

/** ingest → detect → parse → enrich → output, as the worker chains them. */
async function runPipeline(source: IngestSource, parse: ParseOptions = {}, enrich: EnrichOptions = {}): Promise<OutputResult> {
  const ingest = await ingestStage(source, {}, ctx());
  const detect = await detectStage(ingest, {}, ctx());
  const parsed = await parseStage({ ...ingest, ...detect }, parse, ctx());
  const enriched = await enrichStage({ ...parsed, language: detect.language }, enrich, ctx());
  return outputStage({ ingest, detect, parse: parsed, enrich: enriched }, { includeText: true }, ctx());
}

/** The error a promise rejects with (undefined if it resolves). */
const caught = (p: Promise<unknown>): Promise<unknown> => p.then(() => undefined, (e: unknown) => e);

t.test("plain text - detected with encoding and language, counted and summarised", async (t) => {
  const { result, json, jsonSize, storeInline } = await runPipeline({ kind: "text", text: `${PROSE}\n\nSee https://example.org/guide for more.` });
  t.equal(result.mediaType, "text/plain");
  t.equal(result.encoding, "utf-8");
  t.equal(result.language, "en", "the result speaks BCP 47");
  t.match(result.text, /^Document processing pipelines/);
  t.same(result.structure.links, [{ href: "https://example.org/guide", text: "https://example.org/guide" }]);
  t.equal(result.counts?.sentences, 4);
  t.equal(result.counts?.words, 37);
  t.equal(result.keywords?.[0]?.term, "pipelines");
  t.equal(result.summary?.length, 3);
  t.equal(jsonSize, json.byteLength);
  t.ok(storeInline);
  t.same(JSON.parse(new TextDecoder().decode(json)), result, "json is the serialised result");
});

t.test("markdown - headings, table rows and links from the lexer", async (t) => {
  const md = "# Guide\n\nIntro with a [link](https://example.com/a).\n\n## Stages\n\n| Stage | Does |\n|---|---|\n| ingest | fetch |\n| parse | *extract* text |\n\nPlain **closing** words &amp; more.\n";
  const { result } = await runPipeline({ kind: "text", text: md });
  t.equal(result.mediaType, "text/markdown");
  t.same(result.structure.headings, [{ level: 1, text: "Guide" }, { level: 2, text: "Stages" }]);
  t.same(result.structure.tables, [{ rows: [["Stage", "Does"], ["ingest", "fetch"], ["parse", "extract text"]] }]);
  t.same(result.structure.links, [{ href: "https://example.com/a", text: "link" }]);
  t.equal(result.text, "Guide\n\nIntro with a link.\n\nStages\n\nStage\tDoes\ningest\tfetch\nparse\textract text\n\nPlain closing words & more.");
});

t.test("html - text without scripts or styles, headings, nested tables, links", async (t) => {
  const html = `<!DOCTYPE html><html><head><title>T</title><style>p{color:red}</style><script>var secret = 1;</script></head>
    <body><h1>Main  Title</h1><p>First &amp; only <a href="/about">about   page</a>.</p>
    <h3>Data</h3><table><tr><th>Name</th><th>Value</th></tr><tr><td>alpha</td><td>1<table><tr><td>inner</td></tr></table></td></tr></table>
    <noscript>enable js</noscript><a href="javascript:void(0)">nothing</a></body></html>`;
  const { result } = await runPipeline({ kind: "text", text: html });
  t.equal(result.mediaType, "text/html");
  t.notMatch(result.text, /secret|color|enable js|\bT\b/);
  t.match(result.text, /Main Title\n\nFirst & only about page\./);
  t.same(result.structure.headings, [{ level: 1, text: "Main Title" }, { level: 3, text: "Data" }]);
  t.same(result.structure.tables, [{ rows: [["inner"]] }, { rows: [["Name", "Value"], ["alpha", "1 inner"]] }]);
  t.same(result.structure.links, [{ href: "/about", text: "about page" }]);
});

t.test("csv - rows as one table, delimiter sniffed, quoted fields kept", async (t) => {
  const csv = 'name;city;note\nAda;London;"likes; semicolons"\nLinus;Helsinki;"said ""hi"""\n';
  const { result } = await runPipeline({ kind: "text", text: csv, filename: "people.csv" });
  t.equal(result.mediaType, "text/csv");
  t.same(result.structure.tables, [{ rows: [["name", "city", "note"], ["Ada", "London", "likes; semicolons"], ["Linus", "Helsinki", 'said "hi"']] }]);
  t.equal(result.text, 'name\tcity\tnote\nAda\tLondon\tlikes; semicolons\nLinus\tHelsinki\tsaid "hi"');
});

t.test("json - pretty text, top-level keys as structure, records as a table", async (t) => {
  const { result } = await runPipeline({ kind: "text", text: '{"title":"Report","items":[1,2]}' });
  t.equal(result.mediaType, "application/json");
  t.equal(result.text, '{\n  "title": "Report",\n  "items": [\n    1,\n    2\n  ]\n}');
  t.same(result.structure.headings, [{ level: 1, text: "title" }, { level: 1, text: "items" }]);
  const records = await runPipeline({ kind: "text", text: '[{"id":1,"name":"a"},{"id":2,"extra":true}]' });
  t.same(records.result.structure.tables, [{ rows: [["id", "name", "extra"], ["1", "a", ""], ["2", "", "true"]] }]);
});

t.test("pdf - text of every page, page count, outline headings, link annotation", async (t) => {
  const bytes = await makePdf([PROSE, "The second page talks about retries.", "The third page is last."], { text: "Read more", url: "https://example.org/more" });
  const { result } = await runPipeline({ kind: "inline", bytes });
  t.equal(result.mediaType, "application/pdf");
  t.equal(result.pageCount, 3);
  t.notOk("pagesParsed" in result);
  t.match(result.text, /^Document processing pipelines turn raw files into structured text\. Every worker reads the job/);
  t.match(result.text, /Read more\n\nThe second page talks about retries\.\n\nThe third page is last\.$/);
  t.same(result.structure.headings.map((h) => h.text), ["Section 1", "Section 2", "Section 3"]);
  t.same(result.structure.links, [{ href: "https://example.org/more", text: "https://example.org/more" }]);
  t.equal(result.language, "en");
});

t.test("pdf - maxPages stops early but reports the real page count", async (t) => {
  const bytes = await makePdf(["Page one.", "Page two.", "Page three."]);
  const { result } = await runPipeline({ kind: "inline", bytes }, { maxPages: 2 });
  t.equal(result.pageCount, 3);
  t.equal(result.pagesParsed, 2);
  t.equal(result.text, "Page one.\n\nPage two.");
});

t.test("docx - headings from styles, paragraphs, table rows, hyperlink", async (t) => {
  const { result } = await runPipeline({ kind: "inline", bytes: await makeDocx(), filename: "report.docx" });
  t.equal(result.mediaType, DOCX);
  t.same(result.structure.headings, [{ level: 1, text: "Quarterly Report" }, { level: 2, text: "Revenue by Region" }]);
  t.same(result.structure.tables, [{ rows: [["Region", "Revenue"], ["North", "120"], ["South", "95"]] }]);
  t.same(result.structure.links, [{ href: "https://example.com/report", text: "the report site" }]);
  t.match(result.text, /^Quarterly Report\n\nDocument processing pipelines[^\n]+\n\nRevenue by Region\n\nDetails are on the report site\.\n\nRegion\tRevenue\nNorth\t120\nSouth\t95$/);
});

t.test("corrupt pdf - a truncated PDF is a permanent corrupt_document", async (t) => {
  const bytes = (await makePdf([PROSE])).slice(0, 600);
  const detected = await detectStage({ bytes }, {}, ctx());
  t.equal(detected.mediaType, "application/pdf", "the magic bytes are still there");
  {
    const err = await caught(parseStage({ bytes, ...detected }, {}, ctx()));
    t.type(err, PermanentStageError);
    t.match(err, { code: "corrupt_document" });
  }
});

t.test("corrupt docx - a truncated DOCX is a permanent corrupt_document", async (t) => {
  const bytes = (await makeDocx()).slice(0, 1500);
  {
    const err = await caught(parseStage({ bytes, mediaType: DOCX }, {}, ctx()));
    t.type(err, PermanentStageError);
    t.match(err, { code: "corrupt_document" });
  }
});

t.test("unsupported binary - a PNG is detected and refused as unsupported_media_type", async (t) => {
  const bytes = makePng();
  const detected = await detectStage({ bytes, filename: "notes.txt" }, {}, ctx());
  t.same(detected, { mediaType: "image/png" }, "magic bytes beat the filename");
  {
    const err = await caught(parseStage({ bytes, ...detected }, {}, ctx()));
    t.type(err, PermanentStageError);
    t.match(err, { code: "unsupported_media_type" });
  }
});

t.test("unknown binary - bytes with NULs are octet-stream and unsupported", async (t) => {
  const bytes = new Uint8Array(256).map((_, i) => (i * 37) % 256);
  const detected = await detectStage({ bytes }, {}, ctx());
  t.same(detected, { mediaType: "application/octet-stream" });
  {
    const err = await caught(parseStage({ bytes, ...detected }, {}, ctx()));
    t.type(err, PermanentStageError);
    t.match(err, { code: "unsupported_media_type" });
  }
});

t.test("allowedMediaTypes - a supported type outside the list is refused", async (t) => {
  const bytes = new TextEncoder().encode("just text");
  {
    const err = await caught(parseStage({ bytes, mediaType: "text/plain" }, { allowedMediaTypes: ["application/pdf"] }, ctx()));
    t.type(err, PermanentStageError);
    t.match(err, { code: "media_type_not_allowed" });
  }
  const ok = await parseStage({ bytes, mediaType: "text/plain; charset=utf-8" }, { allowedMediaTypes: ["text/plain"] }, ctx());
  t.equal(ok.text, "just text");
});

t.test("cancel - an aborted signal stops a stage before it works", async (t) => {
  const controller = new AbortController();
  controller.abort(new Error("job cancelled"));
  const bytes = await makePdf([PROSE]);
  await t.rejects(parseStage({ bytes, mediaType: "application/pdf" }, {}, { signal: controller.signal }), { message: "job cancelled" });
  await t.rejects(enrichStage({ text: PROSE }, {}, { signal: controller.signal }), { message: "job cancelled" });
});

t.test("output - text only on request, retention passed through, big results leave the row", async (t) => {
  const ingest = await ingestStage({ kind: "text", text: PROSE }, {}, ctx());
  const detect = await detectStage(ingest, {}, ctx());
  const parse = await parseStage({ ...ingest, ...detect }, {}, ctx());
  const small = await outputStage({ ingest, detect, parse }, { resultRetentionMs: 3_600_000 }, ctx());
  t.notOk("text" in small.result, "no text unless includeText");
  t.notOk("counts" in small.result, "no enrichment fields when enrich did not run");
  t.same(small.result, {
    schemaVersion: 1, mediaType: "text/plain", encoding: "utf-8", language: "en", sha256: ingest.sha256,
    size: ingest.size, structure: { headings: [], tables: [], links: [] },
  });
  t.equal(small.resultRetentionMs, 3_600_000);
  t.ok(small.storeInline);

  const huge = "word ".repeat(300_000);
  const bigParse = { ...parse, text: huge };
  const big = await outputStage({ ingest, detect, parse: bigParse }, { includeText: true }, ctx());
  t.ok(big.jsonSize > 1024 * 1024);
  t.equal(big.storeInline, false, "over 1 MiB goes to object storage");
});

import t from "tap";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { ResultFormat, StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { openBuckets } from "../internal/jobs/topology.ts";
import { DOCX } from "../internal/stages/index.ts";
import { Code, codeOf, jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { makeDocx, makePdf, PROSE } from "./stages-fixtures.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { jobs: true, auth: true });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);

type Source = { case: "text"; value: string } | { case: "content"; value: Uint8Array };

/** Submits a document through JobService and returns its finished job and inline result. */
async function run(source: Source, filename = "") {
  const { job } = await client.createJob({ job: { document: { source, filename } } });
  const done = await waitForJob(client, job!.name);
  const { result } = done.state === JobState.SUCCEEDED ? await client.getJobResult({ name: `${job!.name}/result` }) : { result: undefined };
  return { job: done, result: result! };
}

t.test("plain text - all five stages succeed once each and the result carries the text", async (t) => {
  const { job, result } = await run({ case: "text", value: `${PROSE}\n\nSee https://example.org/guide for more.` });
  t.equal(job.state, JobState.SUCCEEDED);
  t.same(job.attempts.map((a) => [a.stage, a.attempt, a.outcome]), [
    [Stage.INGEST, 1, StageAttemptOutcome.SUCCEEDED],
    [Stage.DETECT, 1, StageAttemptOutcome.SUCCEEDED],
    [Stage.PARSE, 1, StageAttemptOutcome.SUCCEEDED],
    [Stage.ENRICH, 1, StageAttemptOutcome.SUCCEEDED],
    [Stage.OUTPUT, 1, StageAttemptOutcome.SUCCEEDED],
  ]);
  t.ok(job.attempts.every((a) => a.workerId !== "" && a.endTime), "attempts record worker and end time");
  t.equal(job.stage, Stage.UNSPECIFIED);
  t.equal(job.document?.detectedMediaType, "text/plain");
  t.match(job.document?.sha256, /^[0-9a-f]{64}$/);
  t.ok(job.resultExpireTime, "a succeeded job has a result expiry");
  t.equal(result.mediaType, "text/plain");
  t.equal(result.language, "en", "a BCP 47 tag, as the contract says (franc gives ISO 639-3: eng)");
  t.match(result.text, /^Document processing pipelines turn raw files into structured text\./);
  t.same(result.structure?.links.map((l) => l.url), ["https://example.org/guide"]);
  t.equal(result.counts?.sentences, 4n);
  t.equal(result.keywords[0]?.term, "pipelines");
});

t.test("markdown - headings, table and link", async (t) => {
  const md = "# Guide\n\nIntro with a [link](https://example.com/a).\n\n## Stages\n\n| Stage | Does |\n|---|---|\n| ingest | fetch |\n| parse | *extract* text |\n\nPlain **closing** words &amp; more.\n";
  const { result } = await run({ case: "text", value: md });
  t.equal(result.mediaType, "text/markdown");
  t.equal(result.text, "Guide\n\nIntro with a link.\n\nStages\n\nStage\tDoes\ningest\tfetch\nparse\textract text\n\nPlain closing words & more.");
  t.same(result.structure?.headings.map((h) => [h.level, h.text]), [[1, "Guide"], [2, "Stages"]]);
  t.same(result.structure?.tables[0]?.rows.map((r) => r.cells), [["Stage", "Does"], ["ingest", "fetch"], ["parse", "extract text"]]);
});

t.test("html - text without scripts, headings and links", async (t) => {
  const html = `<!DOCTYPE html><html><head><title>T</title><script>var secret = 1;</script></head>
    <body><h1>Main  Title</h1><p>First &amp; only <a href="/about">about   page</a>.</p></body></html>`;
  const { result } = await run({ case: "text", value: html });
  t.equal(result.mediaType, "text/html");
  t.equal(result.text, "Main Title\n\nFirst & only about page.");
  t.notMatch(result.text, /secret/);
  t.same(result.structure?.links.map((l) => [l.url, l.text]), [["/about", "about page"]]);
});

t.test("csv - rows as a table and tab-separated text", async (t) => {
  const csv = 'name;city;note\nAda;London;"likes; semicolons"\nLinus;Helsinki;"said ""hi"""\n';
  const { result } = await run({ case: "text", value: csv }, "people.csv");
  t.equal(result.mediaType, "text/csv");
  t.equal(result.text, 'name\tcity\tnote\nAda\tLondon\tlikes; semicolons\nLinus\tHelsinki\tsaid "hi"');
  t.equal(result.structure?.tables[0]?.rows.length, 3);
});

t.test("json - pretty-printed text and top-level keys", async (t) => {
  const { result } = await run({ case: "text", value: '{"title":"Report","items":[1,2]}' });
  t.equal(result.mediaType, "application/json");
  t.equal(result.text, '{\n  "title": "Report",\n  "items": [\n    1,\n    2\n  ]\n}');
  t.same(result.structure?.headings.map((h) => h.text), ["title", "items"]);
});

t.test("pdf - text of every page and the page count", async (t) => {
  const bytes = await makePdf([PROSE, "The second page talks about retries.", "The third page is last."]);
  const { job, result } = await run({ case: "content", value: bytes }, "report.pdf");
  t.equal(job.document?.detectedMediaType, "application/pdf");
  t.equal(result.mediaType, "application/pdf");
  t.equal(result.structure?.pageCount, 3);
  t.match(result.text, /^Document processing pipelines turn raw files into structured text\./);
  t.match(result.text, /The second page talks about retries\.\n\nThe third page is last\.$/);
});

t.test("docx - headings, table, hyperlink and text", async (t) => {
  const { result } = await run({ case: "content", value: await makeDocx() }, "report.docx");
  t.equal(result.mediaType, DOCX);
  t.match(result.text, /^Quarterly Report\n\nDocument processing pipelines[^\n]+\n\nRevenue by Region\n\nDetails are on the report site\.\n\nRegion\tRevenue\nNorth\t120\nSouth\t95$/);
  t.same(result.structure?.headings.map((h) => [h.level, h.text]), [[1, "Quarterly Report"], [2, "Revenue by Region"]]);
  t.same(result.structure?.links.map((l) => [l.url, l.text]), [["https://example.com/report", "the report site"]]);
});

t.test("download - the inline result streams as JSON and as text", async (t) => {
  const { job } = await run({ case: "text", value: PROSE });
  const chunks = [];
  for await (const c of client.downloadJobResult({ name: `${job.name}/result` })) chunks.push(c);
  t.equal(chunks[0]?.mediaType, "application/json");
  const json = JSON.parse(Buffer.concat(chunks.map((c) => c.chunk)).toString("utf8")) as { text: string; sha256: string };
  t.equal(json.text, PROSE);
  t.equal(json.sha256, job.document?.sha256);
  const text = [];
  for await (const c of client.downloadJobResult({ name: `${job.name}/result`, format: ResultFormat.TEXT, offset: 9n })) text.push(c);
  t.equal(Buffer.concat(text.map((c) => c.chunk)).toString("utf8"), PROSE.slice(9));
  t.equal(text[0]?.offset, 9n);
});

t.test("large result - over 1 MiB goes to the object store and downloads intact", async (t) => {
  const words = ["alpha", "beta", "gamma", "delta", "epsilon"];
  const text = Array.from({ length: 60_000 }, (_, i) => `${words[i % 5]}${i % 97} sentence number ${i}.`).join(" ").slice(0, 1_500_000);
  const { job } = await client.createJob({ job: { document: { source: { case: "text", value: text } } } });
  const done = await waitForJob(client, job!.name, undefined, 60_000);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  const { result } = await client.getJobResult({ name: `${job!.name}/result` });
  t.equal(result?.text, "", "a large result carries no text inline");
  t.equal(result?.object?.bucket, `${mesh.isolated.namespace}_results`);
  t.ok(Number(result?.object?.sizeBytes) > 1024 * 1024);
  const chunks = [];
  for await (const c of client.downloadJobResult({ name: `${job!.name}/result` })) chunks.push(c);
  t.ok(chunks.length >= 2, "streamed in more than one chunk");
  const bytes = Buffer.concat(chunks.map((c) => c.chunk));
  t.equal(bytes.length, Number(result?.object?.sizeBytes));
  t.equal((JSON.parse(bytes.toString("utf8")) as { text: string }).text, text);

  // Retention: once expired, the sweep deletes the row and the object.
  await mesh.infra.db.query("UPDATE job_results SET expire_time = now() - interval '1 second' WHERE job_id = $1", [job!.name.slice(5)]);
  await mesh.jobs!.reaper.sweep();
  t.equal(await codeOf(client.getJobResult({ name: `${job!.name}/result` })), Code.NotFound);
  const { results } = await openBuckets(mesh.jobs!.topology, mesh.infra.bus.js);
  t.equal(await results.getBlob(result!.object!.key), null, "the object is deleted");
});

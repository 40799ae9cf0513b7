import t from "tap";
import { equals, fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { ConnectError } from "@connectrpc/connect";
import { createHash } from "node:crypto";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { JobResultSchema, ResultFormat, StageAttemptOutcome } from "../gen/jobmesh/v1/jobs_pb.js";
import { Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { openBuckets } from "../internal/bus/topology.ts";
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

/** Every message of a download, and its bytes joined. */
async function download(req: { name: string; format?: ResultFormat; offset?: bigint }) {
  const chunks = [];
  for await (const c of client.downloadJobResult(req)) chunks.push(c);
  return { chunks, bytes: Buffer.concat(chunks.map((c) => c.chunk)) };
}

t.test("download - the inline result streams as the JobResult JSON that GetJobResult gives, and as text", async (t) => {
  const { job, result } = await run({ case: "text", value: PROSE });
  const { chunks, bytes } = await download({ name: `${job.name}/result` });
  t.equal(chunks[0]?.mediaType, "application/json");
  t.equal(chunks[0]?.totalSize, BigInt(bytes.length));
  const downloaded = fromJsonString(JobResultSchema, bytes.toString("utf8"));
  t.equal(downloaded.text, PROSE);
  t.equal(downloaded.sha256, job.document?.sha256);
  t.equal(downloaded.mediaType, result.mediaType);
  t.same(downloaded.counts, result.counts);
  t.ok(result.keywords.length > 0, "the result has keywords to compare");
  t.same(downloaded.keywords, result.keywords);
  t.same(downloaded.structure, result.structure);
  t.ok(equals(JobResultSchema, downloaded, result), "the whole message is GetJobResult's");
  t.equal(bytes.toString("utf8"), toJsonString(JobResultSchema, result), "byte for byte its protobuf JSON");

  const text = await download({ name: `${job.name}/result`, format: ResultFormat.TEXT, offset: 9n });
  t.equal(text.bytes.toString("utf8"), PROSE.slice(9));
  t.equal(text.chunks[0]?.offset, 9n);
  t.equal(text.chunks[0]?.mediaType, "text/plain; charset=utf-8");
});

t.test("download - an offset at the end streams nothing, one past it is OUT_OF_RANGE", async (t) => {
  const { job } = await run({ case: "text", value: PROSE });
  const name = `${job.name}/result`;
  const { bytes } = await download({ name });
  const size = BigInt(bytes.length);
  const atEnd = await download({ name, offset: size });
  t.equal(atEnd.bytes.length, 0, "no bytes");
  t.same(atEnd.chunks.map((c) => [c.offset, c.totalSize]), [[size, size]], "one message that still tells the size");
  t.equal(await codeOf(download({ name, offset: size + 1n })), Code.OutOfRange);
  t.equal(await codeOf(download({ name, format: ResultFormat.TEXT, offset: BigInt(PROSE.length) + 1n })), Code.OutOfRange, "text too");
  const error = await download({ name, offset: size + 1n }).catch((e: unknown) => ConnectError.from(e));
  t.match((error as ConnectError).rawMessage, `offset ${size + 1n} is past the end of the result (${size} bytes)`, "the message names the offset and the size");
});

t.test("large document - the original is kept in the object store, not in Postgres, and goes with the job", async (t) => {
  // A PDF over 256 KiB (incompressible padding in its metadata) with its text on two pages.
  const pdf = await makePdf(["A large report, first page.", "Second page of the large report."]);
  const padded = new Uint8Array(pdf.byteLength + 400 * 1024);
  padded.set(pdf);
  padded.set(new Uint8Array(Buffer.from("\n%".concat("x".repeat(400 * 1024 - 2)))), pdf.byteLength);
  const { job, result } = await run({ case: "content", value: padded }, "large.pdf");
  t.equal(job.state, JobState.SUCCEEDED, JSON.stringify(job.error));
  t.match(result.text, /A large report, first page\.\s+Second page of the large report\./, "detect and parse read the kept original");
  t.equal(result.sha256, createHash("sha256").update(padded).digest("hex"));

  const jobId = job.name.slice("jobs/".length);
  const { rows } = await mesh.infra.db.query<{ bytes: Buffer | null; key: string | null }>(
    "SELECT bytes, output->>'originalKey' AS key FROM stage_outputs WHERE job_id = $1 AND stage = $2",
    [jobId, Stage.INGEST],
  );
  t.equal(rows[0].bytes, null, "no copy of the document in Postgres");
  t.match(rows[0].key, new RegExp(`^originals/.+/${jobId}/0-1$`));
  const { uploads } = await openBuckets(mesh.jobs!.topology, mesh.infra.bus.js);
  const kept = await uploads.getBlob(rows[0].key!);
  t.ok(kept && Buffer.from(kept).equals(Buffer.from(padded)), "the object holds the original");

  await client.deleteJob({ name: job.name });
  t.equal(await uploads.getBlob(rows[0].key!), null, "DeleteJob removes it");
});

t.test("large result - over 1 MiB goes to the object store and downloads intact", async (t) => {
  const words = ["alpha", "beta", "gamma", "delta", "epsilon"];
  const text = Array.from({ length: 60_000 }, (_, i) => `${words[i % 5]}${i % 97} sentence number ${i}.`).join(" ").slice(0, 1_500_000);
  const { job } = await client.createJob({ job: { document: { source: { case: "text", value: text } } } });
  const done = await waitForJob(client, job!.name, undefined, 60_000);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  const name = `${job!.name}/result`;
  const { result } = await client.getJobResult({ name });
  t.equal(result?.text, "", "a large result carries no text inline");
  t.equal(result?.structure, undefined, "nor structure");
  t.equal(result?.sha256, done.document?.sha256, "but its metadata");
  t.ok(result?.keywords.length, "keywords included");
  t.ok(result?.createTime && result.expireTime);
  t.equal(result?.object?.bucket, `${mesh.isolated.namespace}_results`);
  t.equal(result?.object?.mediaType, "application/json");
  t.ok(Number(result?.object?.sizeBytes) > 1024 * 1024);
  const { chunks, bytes } = await download({ name });
  t.ok(chunks.length >= 2, "streamed in more than one chunk");
  t.equal(chunks[0]?.mediaType, "application/json");
  t.equal(chunks[0]?.totalSize, result?.object?.sizeBytes);
  t.equal(bytes.length, Number(result?.object?.sizeBytes));
  t.equal(createHash("sha256").update(bytes).digest("hex"), result?.object?.sha256, "the object's SHA-256 is that of the bytes downloaded");
  const downloaded = fromJsonString(JobResultSchema, bytes.toString("utf8"));
  t.equal(downloaded.text, text);
  t.equal(downloaded.name, name);
  t.equal(downloaded.sha256, result?.sha256);
  t.equal(downloaded.mediaType, result?.mediaType);
  t.same(downloaded.counts, result?.counts);
  t.same(downloaded.keywords, result?.keywords);
  t.equal(downloaded.object, undefined, "the object does not name itself");
  const resumed = await download({ name, offset: 1_000_000n });
  t.ok(resumed.bytes.equals(bytes.subarray(1_000_000)), "resumes at an offset");
  t.same(resumed.chunks.map((c) => c.offset), [1_000_000n, ...resumed.chunks.slice(1).map((_, i) => 1_000_000n + BigInt((i + 1) * 1024 * 1024))], "each message says where it starts");
  t.ok(resumed.chunks.every((c) => c.chunk.byteLength <= 1024 * 1024), "no message over 1 MiB");
  t.equal((await download({ name, format: ResultFormat.TEXT })).bytes.toString("utf8"), text, "the text alone");
  t.equal(await codeOf(download({ name, offset: BigInt(bytes.length) + 1n })), Code.OutOfRange);

  // Retention: once expired, the sweep deletes the row and the object.
  const { results } = await openBuckets(mesh.jobs!.topology, mesh.infra.bus.js);
  t.ok(await results.getBlob(result!.object!.key), "the object is there until then");
  await mesh.infra.db.query("UPDATE job_results SET expire_time = now() - interval '1 second' WHERE job_id = $1", [job!.name.slice(5)]);
  await mesh.jobs!.reaper.sweep();
  t.equal(await codeOf(client.getJobResult({ name })), Code.NotFound);
  t.equal(await results.getBlob(result!.object!.key), null, "the object is deleted");
});

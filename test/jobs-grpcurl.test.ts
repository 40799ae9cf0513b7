/**
 * The README's first job, as a new user runs it with a reflection-driven CLI (`buf curl`, the
 * same kind of client as grpcurl) over native gRPC and no proto files: a PDF submitted as base64,
 * watched stage by stage, its result read and downloaded.
 */
import t from "tap";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { makePdf } from "./stages-fixtures.ts";
import { startTestMesh } from "./support/mesh.ts";

const buf = join(import.meta.dirname, "../node_modules/.bin/buf");
const mesh = await startTestMesh({}, { jobs: true, auth: true, workers: 1 });
t.teardown(() => mesh.close());
const { authorization } = await mesh.auth!.headersFor("admin");

/** Calls a JobService method; returns every message of the (possibly streamed) response. */
async function call(method: string, body: unknown): Promise<Record<string, unknown>[]> {
  const { stdout } = await promisify(execFile)(
    buf,
    ["curl", "--http2-prior-knowledge", "--protocol", "grpc", "-H", `authorization: ${authorization}`, "-d", JSON.stringify(body), `${mesh.jobs!.url}/jobmesh.v1.JobService/${method}`],
    { encoding: "utf8", timeout: 30_000 },
  );
  // One pretty-printed JSON object per message: each starts with "{" at the start of a line.
  return stdout.trim().split(/\n(?=\{)/).map((text) => JSON.parse(text) as Record<string, unknown>);
}

t.test("grpcurl-style - submit a PDF, watch it run stage by stage, read and download its result", async (t) => {
  const pdf = await makePdf(["Quarterly report. Revenue grew in the third quarter.", "Outlook: stable."]);
  const [created] = await call("CreateJob", { job: { document: { content: Buffer.from(pdf).toString("base64"), filename: "report.pdf" } } });
  const job = created.job as { name: string; state: string };
  t.match(job.name, /^jobs\/[0-9a-f-]{36}$/);
  t.equal(job.state, "JOB_STATE_QUEUED");

  const watched = (await call("WatchJob", { name: job.name })).map((m) => m.event as { type: string; stage?: string });
  t.same(watched.map((e) => [e.type, e.stage ?? ""]), [
    ["JOB_EVENT_TYPE_JOB_CREATED", ""],
    ...["INGEST", "DETECT", "PARSE", "ENRICH", "OUTPUT"].flatMap((s) => [
      ["JOB_EVENT_TYPE_STAGE_STARTED", `STAGE_${s}`],
      ["JOB_EVENT_TYPE_STAGE_SUCCEEDED", `STAGE_${s}`],
    ]),
    ["JOB_EVENT_TYPE_JOB_SUCCEEDED", ""],
  ], "every event, in order, and the stream ends with the job");

  const [{ result }] = await call("GetJobResult", { name: `${job.name}/result` });
  const inline = result as { text: string; mediaType: string; language: string; structure: { pageCount: number } };
  t.equal(inline.mediaType, "application/pdf");
  t.match(inline.text, /Quarterly report\. Revenue grew in the third quarter\.\s+Outlook: stable\./);
  t.equal(inline.structure.pageCount, 2);
  t.equal(inline.language, "en");

  const chunks = await call("DownloadJobResult", { name: `${job.name}/result` });
  const bytes = Buffer.concat(chunks.map((c) => Buffer.from(c.chunk as string, "base64")));
  t.equal(String(bytes.byteLength), chunks[0].totalSize, "the chunks add up to the size announced");
  t.equal((JSON.parse(bytes.toString("utf8")) as { text: string }).text, inline.text, "the download holds the same text");
});

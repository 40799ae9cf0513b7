/**
 * DownloadJobResult in TEXT format streams a large result's text: it arrives in messages of at
 * most 1 MiB, equals the text byte for byte, resumes at an offset, and the download holds no more
 * of the object than a message and a few chunks (never the whole object or the whole text).
 */
import t from "tap";
import { create, toJsonString } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import v8 from "node:v8";
import vm from "node:vm";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { JobResultSchema, ResultFormat } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { openBuckets } from "../internal/bus/topology.ts";
import { downloadResult } from "../internal/jobs/transfer.ts";
import { jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

// A result over 1 MiB through the whole pipeline is slow on a loaded machine: a hang guard, not a speed check.
t.setTimeout(300_000);
const mesh = await startTestMesh({}, { jobs: true, auth: true });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);

t.test("text download - a result over 1 MiB arrives as its text in several messages", async (t) => {
  // Quotes, backslashes, newlines and non-ASCII: all escaped or multi-byte in the stored JSON.
  const line = (i: number) => `Zeile ${i}: "Größe" \\ Maß — naïve café ${i % 7 === 0 ? "日本語 " : ""}end.`;
  const text = Array.from({ length: 40_000 }, (_, i) => line(i)).join("\n");
  const bytes = Buffer.from(text);
  t.ok(bytes.length > 1.5 * 1024 * 1024);
  // No enrich: the text is what parse gives, and enrich of 1.5 MiB is the slow part.
  const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1", interceptors: signIn }));
  const config = { stages: [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE }, { stage: Stage.OUTPUT, options: { options: { case: "output" as const, value: { includeText: true } } } }] };
  const { pipeline } = await pipelines.createPipeline({ pipelineId: "text-only", pipeline: { config } });
  const { job } = await client.createJob({ job: { pipeline: pipeline!.name, document: { source: { case: "text", value: text } } } });
  const done = await waitForJob(client, job!.name, undefined, 90_000);
  t.equal(done.state, JobState.SUCCEEDED, JSON.stringify(done.error));
  const name = `${job!.name}/result`;
  const { result } = await client.getJobResult({ name });
  t.ok(result?.object, "stored as an object");

  const chunks = [];
  for await (const c of client.downloadJobResult({ name, format: ResultFormat.TEXT })) chunks.push(c);
  const got = Buffer.concat(chunks.map((c) => c.chunk));
  t.ok(chunks.length >= 2, `several messages (${chunks.length})`);
  t.ok(chunks.every((c) => c.chunk.byteLength <= 1024 * 1024), "none over 1 MiB");
  t.equal(chunks[0].mediaType, "text/plain; charset=utf-8");
  t.equal(chunks[0].totalSize, BigInt(bytes.length), "total_size is the text's size in bytes");
  t.ok(got.equals(bytes), "the bytes are the text's UTF-8");
  t.equal(got.toString("utf8"), result?.text || text);

  const from = 1_234_567n;
  const resumed = [];
  for await (const c of client.downloadJobResult({ name, format: ResultFormat.TEXT, offset: from })) resumed.push(c);
  t.equal(resumed[0].offset, from);
  t.ok(Buffer.concat(resumed.map((c) => c.chunk)).equals(bytes.subarray(Number(from))), "resumes at a byte offset");
});

t.test("text download - holds a message and a few chunks, not the object or the text", async (t) => {
  v8.setFlagsFromString("--expose-gc");
  const gc = vm.runInNewContext("gc") as () => void;
  const { results } = await openBuckets(mesh.jobs!.topology, mesh.infra.bus.js);
  const name = "jobs/00000000-0000-4000-8000-000000000001/result";
  const key = `test/${name}.json`;
  const size = 24 * 1024 * 1024;
  await results.putBlob({ name: key }, new TextEncoder().encode(toJsonString(JobResultSchema, create(JobResultSchema, { name, text: "x".repeat(size) }))));
  const jobs = { getResult: async () => create(JobResultSchema, { name, object: { bucket: mesh.jobs!.topology.resultsBucket, key } }) };

  const used = () => {
    // Twice: an ArrayBuffer's external memory is returned by a weak callback the first pass queues.
    gc();
    gc();
    const m = process.memoryUsage();
    return m.heapUsed + m.arrayBuffers;
  };
  // The least of a few samples a little apart: what the download holds stays held in every one,
  // while garbage of other work in this process (the mesh's relay and worker, NATS buffers of the
  // upload just made) is gone by one of them. A single sample read the upload's buffers as held
  // on a loaded machine.
  const settled = async (samples: number) => {
    let least = Infinity;
    for (let i = 0; i < samples; i++) {
      least = Math.min(least, used());
      await new Promise((resolve) => setTimeout(resolve, 150));
    }
    return least;
  };
  const before = await settled(3);
  const download = downloadResult({ jobs, results: { bucket: results, js: mesh.infra.bus.js } }, "tenant", name, ResultFormat.TEXT, 0n);
  const first = await download.next();
  t.equal(first.value?.totalSize, BigInt(size));
  // The download is suspended after its first message, as it is while a slow client reads.
  const held = (await settled(6)) - before;
  t.ok(held < 8 * 1024 * 1024, `holds ${(held / 1024 / 1024).toFixed(1)} MiB of a ${size / 1024 / 1024} MiB text`);
  let total = first.value!.chunk.byteLength;
  for await (const c of download) total += c.chunk.byteLength;
  t.equal(total, size, "and sends it all");
  await results.delete(key);
});

/**
 * WatchJob limits: one caller cannot hold more than JOBMESH_MAX_WATCH_STREAMS_PER_CALLER open
 * streams (the rest are RESOURCE_EXHAUSTED, naming the limit), other tenants' watches still work
 * meanwhile, and closing streams frees the budget. The streams of one job share one watcher.
 */
import t from "tap";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { JobEventType, JobState } from "../gen/jobmesh/v1/events_pb.js";
import { JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startWorkers } from "../internal/mesh/servers.ts";
import { Code } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

const limit = 100;
const streams = 2000;
// Several HTTP/2 connections, each well under any sensible SETTINGS_MAX_CONCURRENT_STREAMS.
const perConnection = 40;

// Two thousand calls on a loaded machine: a hang guard, not a speed check.
t.setTimeout(300_000);
// No workers at first: the watched job stays QUEUED, so its streams stay open.
const mesh = await startTestMesh({ JOBMESH_MAX_WATCH_STREAMS_PER_CALLER: String(limit) }, { jobs: true, auth: true, workers: 0 });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const clients = Array.from({ length: Math.ceil(streams / perConnection) }, () => createClient(JobService, createGrpcTransport({ baseUrl: mesh.jobs!.url })));
const admin = await auth.headersFor("admin");
const viewer = await auth.headersFor("viewer");
const otherAdmin = await auth.headersFor("admin", "tenant-other");

interface Watch {
  /** Resolves with "open" once the stream delivered its first event, or with the error code that ended it. */
  opened: Promise<"open" | Code>;
  /** The error that ended the stream, if one did. */
  error?: ConnectError;
  /** Every event type the stream delivered, until it ended. */
  events: JobEventType[];
  ended: Promise<void>;
  close(): void;
}

function watch(name: string, headers: Record<string, string>, i = 0): Watch {
  const abort = new AbortController();
  const events: JobEventType[] = [];
  let open: (v: "open" | Code) => void = () => {};
  const opened = new Promise<"open" | Code>((resolve) => (open = resolve));
  const w: Watch = { opened, events, close: () => abort.abort(), ended: Promise.resolve() };
  w.ended = (async () => {
    try {
      for await (const res of clients[i % clients.length].watchJob({ name }, { headers, signal: abort.signal })) {
        events.push(res.event!.type);
        open("open");
      }
    } catch (error) {
      w.error = ConnectError.from(error);
      open(w.error.code);
    }
  })();
  return w;
}

const { job } = await clients[0].createJob({ job: { document: { source: { case: "text", value: "watched by many" } } } }, { headers: admin });
const watched = job!.name;
let open: Watch[] = [];

t.test(`watch - ${streams} streams of one viewer: exactly ${limit} open, the rest RESOURCE_EXHAUSTED naming the limit`, async (t) => {
  // One first, then waves of 50 at once: the identity check loads a user's standing from Postgres
  // for every call that misses its caches (no single flight), and 2,000 at once (or 200, when the
  // cache expires between waves) exhaust the pool on a loaded machine. The limit is about streams
  // held, not calls in flight.
  const all = [watch(watched, viewer, 0)];
  await all[0].opened;
  for (let i = 1; i < streams; i += 50) {
    const wave = Array.from({ length: Math.min(50, streams - i) }, (_, j) => watch(watched, viewer, i + j));
    await Promise.all(wave.map((w) => w.opened));
    all.push(...wave);
  }
  const outcomes = await Promise.all(all.map((w) => w.opened));
  open = all.filter((_, i) => outcomes[i] === "open");
  const refused = all.filter((_, i) => outcomes[i] === Code.ResourceExhausted);
  const tally = new Map<string, number>();
  for (const o of outcomes) tally.set(String(o), (tally.get(String(o)) ?? 0) + 1);
  t.comment(`outcomes (code or open): ${JSON.stringify([...tally])}`);
  t.equal(open.length, limit, "open streams");
  t.equal(refused.length, streams - limit, "refused streams");
  t.match(refused[0]?.error?.rawMessage, /at most 100 per caller \(JOBMESH_MAX_WATCH_STREAMS_PER_CALLER\)/);
  t.ok(open.every((w) => w.events[0] === JobEventType.JOB_CREATED), "each open stream replays the stored events");
  t.same(mesh.jobs!.watcher.stats(), { streams: limit, subscriptions: 1 }, "the process holds exactly the limit, fed by one subscription");
});

t.test("watch - another tenant's job, created and watched meanwhile, runs and ends SUCCEEDED", async (t) => {
  // Built-in pipelines are the bootstrap tenant's: the other tenant makes its own.
  const pipelines = createClient(PipelineService, createGrpcTransport({ baseUrl: mesh.pipelines.url }));
  const config = { stages: [{ stage: Stage.INGEST }, { stage: Stage.DETECT }, { stage: Stage.PARSE }, { stage: Stage.OUTPUT }] };
  const { pipeline } = await pipelines.createPipeline({ pipelineId: "other-tenant", pipeline: { config } }, { headers: otherAdmin });
  const started = Date.now();
  const { job: other } = await clients[1].createJob({ job: { pipeline: pipeline!.name, document: { source: { case: "text", value: "another tenant's document" } } } }, { headers: otherAdmin });
  const w = watch(other!.name, otherAdmin, 2);
  t.equal(await w.opened, "open");
  t.same(mesh.jobs!.watcher.stats(), { streams: limit + 1, subscriptions: 2 }, "one subscription per watched tenant");
  // A worker now: both tenants' jobs run, and the viewer's hundred streams see theirs end too.
  mesh.workers.push(await startWorkers(mesh.infra));
  await w.ended;
  t.equal(w.error, undefined);
  t.equal(w.events.at(-1), JobEventType.JOB_SUCCEEDED);
  t.comment(`other tenant: create → watched SUCCEEDED in ${Date.now() - started} ms with ${limit} streams of another caller open (worker started in between)`);
  const { job: done } = await clients[1].getJob({ name: other!.name }, { headers: otherAdmin });
  t.equal(done?.state, JobState.SUCCEEDED);
  await Promise.all(open.map((w) => w.ended));
  t.ok(open.every((w) => w.error === undefined && w.events.at(-1) === JobEventType.JOB_SUCCEEDED), "every open stream of the viewer got its job's end from the shared watcher");
});

t.test("watch - closing streams frees the budget", async (t) => {
  // A job that stays QUEUED: the worker is stopped first.
  await Promise.all(mesh.workers.splice(0).map((w) => w.stop(1000)));
  const { job: queued } = await clients[0].createJob({ job: { document: { source: { case: "text", value: "queued" } } } }, { headers: admin });
  const held: Watch[] = [];
  for (let i = 0; i < limit; i += 50) {
    const wave = Array.from({ length: 50 }, (_, j) => watch(queued!.name, viewer, i + j));
    await Promise.all(wave.map((w) => w.opened));
    held.push(...wave);
  }
  t.ok((await Promise.all(held.map((w) => w.opened))).every((o) => o === "open"), "the budget is whole again once the earlier streams ended");
  t.equal(await watch(queued!.name, viewer).opened, Code.ResourceExhausted, "one more is refused");
  for (const w of held.slice(0, 10)) w.close();
  await Promise.all(held.slice(0, 10).map((w) => w.ended));
  // The server releases a stream when it sees the client go: wait for that, not for a time.
  for (let tries = 0; mesh.jobs!.watcher.stats().streams > limit - 10; tries++) {
    if (tries > 500) throw new Error(`still ${mesh.jobs!.watcher.stats().streams} streams open`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const again = Array.from({ length: 10 }, (_, i) => watch(queued!.name, viewer, i));
  t.ok((await Promise.all(again.map((w) => w.opened))).every((o) => o === "open"), "ten closed, ten open again");
  t.equal(await watch(queued!.name, viewer).opened, Code.ResourceExhausted);
  for (const w of [...held, ...again]) w.close();
  await Promise.all([...held, ...again].map((w) => w.ended));
});

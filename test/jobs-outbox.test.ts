import t from "tap";
import { JobEventType } from "../gen/jobmesh/v1/events_pb.js";
import { inTransaction } from "../internal/db/index.ts";
import { recordEvents } from "../internal/jobs/outbox.ts";
import { createOutboxRelay } from "../internal/outbox/index.ts";
import { selectJob } from "../internal/jobs/store.ts";
import { jobClient, signInAsAdmin } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

// No relay and no workers: the test plays the relay itself.
const mesh = await startTestMesh({}, { jobs: true, auth: true, workers: 0, relay: false });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);
const { db, bus, log, telemetry } = mesh.infra;
const ns = mesh.isolated.namespace;

/** Messages stored per subject in a stream. */
async function subjectCounts(stream: string): Promise<Record<string, number>> {
  const info = await bus.jsm.streams.info(stream, { subjects_filter: ">" });
  return (info.state.subjects ?? {}) as Record<string, number>;
}
const unpublished = async () => (await db.query<{ n: number }>("SELECT count(*)::int AS n FROM outbox")).rows[0].n;

t.test("outbox - a relay killed between publish and marking republishes, and JetStream keeps one copy", async (t) => {
  const { job } = await client.createJob({ job: { document: { source: { case: "text", value: "outbox" } } } });
  t.equal(await unpublished(), 2, "the job_created event and the ingest task wait in the outbox");
  t.same(await subjectCounts(`${ns}_events`), {}, "nothing is published before a relay runs");

  const crashing = createOutboxRelay({ db, js: bus.js, log, tracer: telemetry.tracer, run: false, beforeMark: () => {
    throw new Error("relay killed");
  } });
  await t.rejects(crashing.publishBatch(), { message: "relay killed" });
  t.equal(await unpublished(), 2, "the rows are still unpublished after the crash");
  const eventSubject = `${ns}.events.${mesh.infra.bootstrapTenantId}.job_created`;
  t.same(await subjectCounts(`${ns}_events`), { [eventSubject]: 1 }, "the crashed relay got the event out");

  const restarted = createOutboxRelay({ db, js: bus.js, log, tracer: telemetry.tracer, run: false });
  t.equal(await restarted.publishBatch(), 2);
  t.equal(await unpublished(), 0);
  t.same(await subjectCounts(`${ns}_events`), { [eventSubject]: 1 }, "the republished event was de-duplicated by Nats-Msg-Id");
  t.same(await subjectCounts(`${ns}_work`), { [`${ns}.work.ingest.normal`]: 1 }, "one stage task");
  t.equal(await restarted.publishBatch(), 0, "published rows are not claimed again");
  t.ok(job);
});

t.test("outbox - a rolled-back change publishes nothing", async (t) => {
  const { job } = await client.createJob({ job: { document: { source: { case: "text", value: "rollback" } } } });
  const relay = createOutboxRelay({ db, js: bus.js, log, tracer: telemetry.tracer, run: false });
  await relay.publishBatch();
  const row = (await selectJob(db, mesh.infra.bootstrapTenantId, job!.name.slice(5)))!;
  await t.rejects(inTransaction(db, async (tx) => {
    await recordEvents(tx, mesh.jobs!.topology, row, [{ type: JobEventType.JOB_CANCELLED }]);
    throw new Error("change rolled back");
  }));
  t.equal(await unpublished(), 0);
  t.equal(await relay.publishBatch(), 0);
  const { rows } = await db.query("SELECT count(*)::int AS n FROM job_events WHERE job_id = $1", [row.id]);
  t.equal(rows[0].n, 1, "only job_created was recorded");
});

t.test("outbox - concurrent relays claim disjoint rows and publish each row once", async (t) => {
  await client.createJobs({ requests: Array.from({ length: 40 }, (_, i) => ({ job: { document: { source: { case: "text" as const, value: `c${i}` } } } })) });
  const relays = [1, 2, 3].map(() => createOutboxRelay({ db, js: bus.js, log, tracer: telemetry.tracer, run: false, batchSize: 10 }));
  let published = 0;
  for (let round = 0; round < 5; round++) {
    const counts = await Promise.all(relays.map((r) => r.publishBatch()));
    published += counts.reduce((a, b) => a + b, 0);
  }
  t.equal(published, 80, "40 events and 40 tasks, each published by exactly one relay");
  t.equal(await unpublished(), 0);
  const work = await subjectCounts(`${ns}_work`);
  t.equal(work[`${ns}.work.ingest.normal`], 42);
});

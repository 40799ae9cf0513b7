/**
 * A stale output attempt that writes its result object after DeleteJob leaves an object no row
 * names: the retention sweep deletes it, and keeps the objects of jobs that exist.
 */
import t from "tap";
import { resultObjectKey } from "../internal/jobs/results.ts";
import { openBuckets } from "../internal/bus/topology.ts";
import { jobClient, signInAsAdmin } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

// No workers: the jobs stay as the test leaves them.
const mesh = await startTestMesh({}, { jobs: true, auth: true, workers: 0 });
t.teardown(() => mesh.close());
const client = jobClient(mesh.jobs!.url, await signInAsAdmin(mesh));
const tenant = mesh.infra.bootstrapTenantId;
const { results } = await openBuckets(mesh.jobs!.topology, mesh.infra.bus.js);
const doc = { source: { case: "text" as const, value: "a document" } };

t.test("sweep - a result object written after its job was deleted is deleted; a live job's is kept", async (t) => {
  const { job: deleted } = await client.createJob({ job: { document: doc } });
  const { job: live } = await client.createJob({ job: { document: doc } });
  await client.cancelJob({ name: deleted!.name });
  await client.deleteJob({ name: deleted!.name });
  const orphanKey = resultObjectKey(tenant, deleted!.name.slice("jobs/".length));
  const liveKey = resultObjectKey(tenant, live!.name.slice("jobs/".length));
  // What a stale output attempt does: its put lands after DeleteJob, and its commit finds no job.
  await results.putBlob({ name: orphanKey }, new TextEncoder().encode('{"text":"late"}'));
  await results.putBlob({ name: liveKey }, new TextEncoder().encode('{"text":"in progress"}'));
  // Not a result key: not the sweep's to judge.
  await results.putBlob({ name: "elsewhere/object.json" }, new TextEncoder().encode("{}"));

  await mesh.jobs!.reaper.sweep();

  t.equal(await results.getBlob(orphanKey), null, "the orphan is gone");
  t.ok(await results.getBlob(liveKey), "the live job's object is kept");
  t.ok(await results.getBlob("elsewhere/object.json"), "a key that names no job is left alone");
});

import t from "tap";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { jobClient, signInAsAdmin, waitForJob } from "./jobs-support.ts";
import { startTestMesh } from "./support/mesh.ts";

const mesh = await startTestMesh({}, { jobs: true, auth: true });
t.teardown(() => mesh.close());
const signIn = await signInAsAdmin(mesh);
const client = jobClient(mesh.jobs!.url, signIn);
const root = join(import.meta.dirname, "..");

t.test("events doc - the consumer example prints every event of a job from JetStream", async (t) => {
  // The example in the README's "Subscribing to job events" section, exactly as a reader sees it.
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("## Subscribing to job events"));
  const code = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  t.ok(code, "the README section has a TypeScript example");
  // Where the doc says to save it: the repository root (its imports are relative to it).
  const file = join(root, `.watch-events-${randomBytes(4).toString("hex")}.ts`);
  writeFileSync(file, code!);
  t.teardown(() => rmSync(file, { force: true }));

  const { job } = await client.createJob({ job: { document: { source: { case: "text", value: "Followed from the stream." } } } });
  await waitForJob(client, job!.name);
  const { stdout } = await promisify(execFile)(process.execPath, [file, mesh.infra.bootstrapTenantId, job!.name], {
    env: { ...process.env, NATS_URL: mesh.isolated.env.NATS_URL, JOBMESH_NAMESPACE: mesh.isolated.namespace },
    timeout: 20_000,
  });
  const lines = stdout.trim().split("\n");
  t.equal(lines[0], "1 job_created JOB_CREATED 0 0");
  t.equal(lines[1], "2 stage_started STAGE_STARTED 1 1");
  t.equal(lines.at(-1), `${lines.length} job_succeeded JOB_SUCCEEDED 0 0`);
  t.equal(lines.length, 12, "created, 5 × (started, succeeded), succeeded");
});

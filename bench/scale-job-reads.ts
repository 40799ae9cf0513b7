/**
 * The scale entry's read rows: GetJob and ListJobs latency with a small and a large number of jobs
 * in the tenant, and the small tenant again once another tenant holds the large number.
 *
 * One test mesh (JobService with identity enforced, one worker) runs one real [ingest, output]
 * job through the API; its row and its stage attempts are the template that set-returning
 * INSERTs (`generate_series`, 50,000 jobs per statement) copy into each tenant: terminal states
 * only, so no reaper or worker ever touches them; one create_time a second, oldest first. The calls then go
 * through the real JobService from the load process, one at a time.
 */
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import pg from "pg";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineService, Stage } from "../gen/jobmesh/v1/pipelines_pb.js";
import type { Queryable } from "../internal/db/index.ts";
import { listJobs } from "../internal/jobs/list.ts";
import { loadJob, selectAttempts } from "../internal/jobs/store.ts";
import { testPassword } from "../test/support/auth.ts";
import { startTestMesh, type TestMesh } from "../test/support/mesh.ts";
import { documentText } from "./jobs-peers.ts";
import type { BenchContext, LoadResult } from "./harness.ts";
import type { JobReadArgs } from "./scale-client.ts";

const clientModule = new URL("./scale-client.ts", import.meta.url).href;
const pipelineId = "bench-ingest-output";
const neighbourSlug = "scale-neighbour";
/** Rows per INSERT: progress on a long seed, and no single transaction of a million rows. */
const seedChunk = 50_000;

/** One measured call. `deep` resumes at 90% of the rows the filter selects, as a token the API would issue there. */
export interface ReadCase {
  label: string;
  call: "get" | "list";
  filter?: string;
  deep?: boolean;
}

// Seeded mix: 5% FAILED, 0.2% CANCELLED, the rest SUCCEEDED; no job RUNNING (all are history).
export const readCases: ReadCase[] = [
  { label: "GetJob, a random job", call: "get" },
  { label: "ListJobs, first page", call: "list", filter: "" },
  { label: "ListJobs, deep keyset page (90% in)", call: "list", filter: "", deep: true },
  { label: "ListJobs state = FAILED (5%), first page", call: "list", filter: "state = FAILED" },
  { label: "ListJobs state = FAILED, deep page (90% in)", call: "list", filter: "state = FAILED", deep: true },
  { label: "ListJobs state = CANCELLED (0.2%), first page", call: "list", filter: "state = CANCELLED" },
  { label: "ListJobs state = RUNNING (none), first page", call: "list", filter: "state = RUNNING" },
];

/** What Postgres did for one call of a case: from EXPLAIN (ANALYZE, BUFFERS) of each statement behind it. */
export interface Explained {
  /** Shared buffers hit or read, summed over the statements: the work done, whatever the machine's load. */
  buffers: number;
  executionMs: number;
  /** Each statement and its plan, for the report. */
  plan: string[];
}

/** One case's figures in one phase. */
export interface ReadFigures {
  latency: LoadResult;
  explained: Explained;
}

export interface ReadResults {
  small: number;
  large: number;
  /** Per case label: the small tenant alone, the large tenant, the small tenant beside the large one. */
  alone: Map<string, ReadFigures>;
  largeTenant: Map<string, ReadFigures>;
  beside: Map<string, ReadFigures>;
  seedSeconds: number;
  close(): Promise<void>;
}

/** How long each case is loaded, per tenant and round. */
export interface ReadTiming {
  rounds: number;
  warmupMs: number;
  durationMs: number;
}

interface Tenant {
  slug: string;
  id: string;
  jobs: number;
}

export async function measureJobReads(ctx: BenchContext, sizes: { small: number; large: number }, timing: ReadTiming): Promise<ReadResults> {
  ctx.progress("scale: starting jobmesh (own database and namespace, identity enforced, one worker)");
  const mesh = await startTestMesh({ JOBMESH_LOG_LEVEL: "warn" }, { jobs: true, workers: 1, auth: true, recordSpans: false });
  const seeder = new pg.Client({ connectionString: mesh.isolated.databaseUrl });
  try {
    await seeder.connect();
    const small: Tenant = { slug: mesh.infra.config.bootstrapTenant, id: mesh.infra.bootstrapTenantId, jobs: 0 };
    const template = await runTemplateJob(mesh, small.slug);
    const neighbourId = (await mesh.auth!.userFor("admin", neighbourSlug)).tenantId;
    const large: Tenant = { slug: neighbourSlug, id: neighbourId, jobs: 0 };
    await createTemplatePipeline(mesh, large.slug);

    const seedStart = performance.now();
    await seed(ctx, seeder, small, sizes.small, template);
    let seedSeconds = (performance.now() - seedStart) / 1000;
    const alone = await measureTenants(ctx, timing, mesh, seeder, [small], "alone");

    const largeStart = performance.now();
    await seed(ctx, seeder, large, sizes.large, template);
    seedSeconds += (performance.now() - largeStart) / 1000;
    const both = await measureTenants(ctx, timing, mesh, seeder, [small, large], "beside");
    return {
      small: small.jobs,
      large: large.jobs,
      alone: alone.get(small.slug)!,
      largeTenant: both.get(large.slug)!,
      beside: both.get(small.slug)!,
      seedSeconds,
      async close() {
        await seeder.end();
        await mesh.close();
      },
    };
  } catch (error) {
    await seeder.end().catch(() => {});
    await mesh.close();
    throw error;
  }
}

/** A JobService or PipelineService client signed in as the tenant's admin (a fresh login: a seed can outlast a token). */
async function adminClients(mesh: TestMesh, tenant: string) {
  const headers = await freshAdminHeaders(mesh, tenant);
  const transport = (baseUrl: string, sessionManager: Http2SessionManager) =>
    createConnectTransport({
      baseUrl,
      httpVersion: "2",
      useBinaryFormat: true,
      sessionManager,
      interceptors: [
        (next) => (req) => {
          for (const [key, value] of Object.entries(headers)) req.header.set(key, value);
          return next(req);
        },
      ],
    });
  const sessions = [new Http2SessionManager(mesh.jobs!.url), new Http2SessionManager(mesh.pipelines.url)];
  return {
    jobs: createClient(JobService, transport(mesh.jobs!.url, sessions[0])),
    pipelines: createClient(PipelineService, transport(mesh.pipelines.url, sessions[1])),
    close: () => sessions.forEach((s) => s.abort()),
  };
}

async function freshAdminHeaders(mesh: TestMesh, tenant: string): Promise<Record<string, string>> {
  const admin = await mesh.auth!.userFor("admin", tenant);
  const { accessToken } = await mesh.auth!.client.login({ email: admin.email, password: testPassword, tenant });
  return { authorization: `Bearer ${accessToken}` };
}

async function createTemplatePipeline(mesh: TestMesh, tenant: string): Promise<void> {
  const clients = await adminClients(mesh, tenant);
  try {
    await clients.pipelines.createPipeline({
      pipelineId,
      pipeline: { displayName: "scale bench", config: { stages: [{ stage: Stage.INGEST }, { stage: Stage.OUTPUT }] } },
    });
  } finally {
    clients.close();
  }
}

/** Runs one [ingest, output] job to SUCCEEDED through the API: the row every seeded job copies. */
async function runTemplateJob(mesh: TestMesh, tenant: string): Promise<string> {
  await createTemplatePipeline(mesh, tenant);
  const clients = await adminClients(mesh, tenant);
  try {
    const { job } = await clients.jobs.createJob({ job: { pipeline: `pipelines/${pipelineId}`, document: { source: { case: "text", value: documentText(0) } } } });
    const deadline = Date.now() + 60_000;
    for (;;) {
      const { job: now } = await clients.jobs.getJob({ name: job!.name });
      if (now!.state === JobState.SUCCEEDED) return job!.name.slice("jobs/".length);
      if (now!.state === JobState.FAILED || Date.now() > deadline) throw new Error(`scale: the template job is ${JobState[now!.state]}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  } finally {
    clients.close();
  }
}

/**
 * Copies the template job `count` times into the tenant, with its stage attempts; the last
 * attempt of a FAILED or CANCELLED copy carries that outcome. Then VACUUM ANALYZE, as autovacuum
 * would soon after: statistics for the planner, hint bits and the visibility map set.
 */
async function seed(ctx: BenchContext, db: pg.Client, tenant: Tenant, count: number, templateId: string): Promise<void> {
  const [template] = (await db.query<{ tenant_id: string }>("SELECT tenant_id FROM jobs WHERE id = $1", [templateId])).rows;
  // One create_time a second, the newest an hour before now: the template job (just made) stays the newest.
  const origin = new Date(Date.now() - 3_600_000 - count * 1000);
  for (let from = 0; from < count; from += seedChunk) {
    const to = Math.min(count, from + seedChunk);
    ctx.progress(`scale: seeding tenant ${tenant.slug}: jobs ${from + 1}..${to} of ${count}`);
    await db.query(seedSql, [tenant.id, template.tenant_id, templateId, from, to, origin, Stage.OUTPUT]);
  }
  tenant.jobs += count;
  ctx.progress("scale: VACUUM ANALYZE jobs, stage_attempts");
  await db.query("VACUUM ANALYZE jobs, stage_attempts");
}

const seedSql = `
WITH t AS (SELECT * FROM jobs WHERE tenant_id = $2 AND id = $3),
a AS (SELECT * FROM stage_attempts WHERE tenant_id = $2 AND job_id = $3),
last AS (SELECT max(stage_index) AS stage_index FROM a),
made AS (
  INSERT INTO jobs (tenant_id, id, pipeline_id, pipeline_version, pipeline_config, priority, state, stage_index,
    stage_attempt, stage_attempt_base, labels, source_kind, source_text, media_type_hint, filename, size_bytes, sha256,
    detected_media_type, error, trace_id, traceparent, event_seq, version, create_time, update_time, start_time, end_time,
    result_expire_time)
  SELECT $1, gen_random_uuid(), t.pipeline_id, t.pipeline_version, t.pipeline_config, t.priority, s.state, t.stage_index,
    t.stage_attempt, t.stage_attempt_base, t.labels, t.source_kind, t.source_text, t.media_type_hint, t.filename,
    t.size_bytes, t.sha256, t.detected_media_type,
    CASE WHEN s.state = ${JobState.FAILED} THEN jsonb_build_object('stage', $7::int, 'code', 'BENCH_FAILED', 'message', 'a seeded failure', 'transient', false) END,
    md5(g::text), '', t.event_seq, t.version, s.created, s.created + interval '40 ms', s.created + interval '5 ms',
    s.created + interval '40 ms', CASE WHEN s.state = ${JobState.SUCCEEDED} THEN s.created + interval '7 days' END
  FROM t, generate_series($4::int, $5::int - 1) AS g,
    LATERAL (SELECT
      CASE WHEN g % 500 = 3 THEN ${JobState.CANCELLED} WHEN g % 20 = 7 THEN ${JobState.FAILED} ELSE ${JobState.SUCCEEDED} END AS state,
      date_trunc('milliseconds', $6::timestamptz + g * interval '1 second') AS created) AS s
  RETURNING tenant_id, id, state, error, create_time
)
INSERT INTO stage_attempts (tenant_id, job_id, stage_index, attempt, stage, worker_id, outcome, start_time, end_time, error)
SELECT m.tenant_id, m.id, a.stage_index, a.attempt, a.stage, a.worker_id,
  CASE WHEN a.stage_index = last.stage_index AND m.state = ${JobState.FAILED} THEN 3
       WHEN a.stage_index = last.stage_index AND m.state = ${JobState.CANCELLED} THEN 5
       ELSE a.outcome END,
  m.create_time + (5 + 15 * a.stage_index) * interval '1 ms', m.create_time + (15 + 15 * a.stage_index) * interval '1 ms',
  CASE WHEN a.stage_index = last.stage_index THEN m.error END
FROM made m, a, last`;

/** Where a deep page starts: a page token for the position 90% into the rows the filter selects. */
async function deepToken(db: pg.Client, mesh: TestMesh, tenant: Tenant, filter: string): Promise<string> {
  const state = /^state = (\w+)$/.exec(filter)?.[1];
  const params: unknown[] = [tenant.id];
  const where = state ? `AND state = $${params.push(JobState[state as keyof typeof JobState])}` : "";
  const { rows: [{ n }] } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM jobs WHERE tenant_id = $1 ${where}`, params);
  const { rows } = await db.query<{ sort_value: string; id: string }>(
    `SELECT create_time::text AS sort_value, id FROM jobs WHERE tenant_id = $1 ${where}
     ORDER BY create_time DESC, id DESC OFFSET ${Math.floor(n * 0.9)} LIMIT 1`,
    params,
  );
  if (rows.length === 0) throw new Error(`scale: no job at 90% of "${filter}" in ${tenant.slug}`);
  // The query key ListJobs signs a token for: the filter and order_by as sent (order_by empty).
  return mesh.infra.pageTokens.encode([rows[0].sort_value, rows[0].id], JSON.stringify([filter, ""]));
}

/** Each case in `timing.rounds` rounds, the tenants alternating within a round, then explained; figures per tenant slug. */
async function measureTenants(ctx: BenchContext, timing: ReadTiming, mesh: TestMesh, db: pg.Client, tenants: Tenant[], phase: string): Promise<Map<string, Map<string, ReadFigures>>> {
  const prepared = [];
  for (const tenant of tenants) {
    const headers = await freshAdminHeaders(mesh, tenant.slug);
    const { rows } = await db.query<{ id: string }>("SELECT id FROM jobs WHERE tenant_id = $1 ORDER BY random() LIMIT 2000", [tenant.id]);
    const names = rows.map((r) => `jobs/${r.id}`);
    const args = new Map<string, JobReadArgs>();
    for (const c of readCases) {
      const common = { baseUrl: mesh.jobs!.url, headers };
      args.set(
        c.label,
        c.call === "get"
          ? { ...common, call: "get", names }
          : { ...common, call: "list", filter: c.filter!, pageToken: c.deep ? await deepToken(db, mesh, tenant, c.filter!) : "" },
      );
    }
    prepared.push({ tenant, args });
  }
  const latencies = new Map(tenants.map((t) => [t.slug, new Map<string, LoadResult>()]));
  const options = { concurrency: 1, warmupMs: timing.warmupMs, durationMs: timing.durationMs };
  for (const c of readCases) {
    for (let round = 0; round < timing.rounds; round++) {
      const order = round % 2 === 0 ? prepared : [...prepared].reverse();
      for (const { tenant, args } of order) {
        ctx.progress(`scale: ${c.label}, tenant ${tenant.slug} (${tenant.jobs} jobs), round ${round + 1}/${timing.rounds}`);
        const series = `scale/${phase}/${tenant.slug}/${c.label}`;
        const result = await ctx.load.run({ module: clientModule, factory: "jobReadCall", args: args.get(c.label), options, series });
        latencies.get(tenant.slug)!.set(c.label, result);
      }
    }
  }
  const figures = new Map<string, Map<string, ReadFigures>>();
  for (const tenant of tenants) {
    const byCase = new Map<string, ReadFigures>();
    for (const c of readCases) byCase.set(c.label, { latency: latencies.get(tenant.slug)!.get(c.label)!, explained: await explainCase(db, mesh, tenant, c) });
    figures.set(tenant.slug, byCase);
  }
  return figures;
}

/**
 * EXPLAIN (ANALYZE, BUFFERS) of the statements the job domain runs for one call of the case (the
 * same functions, the same SQL and parameters), recorded on their way to Postgres.
 */
async function explainCase(db: pg.Client, mesh: TestMesh, tenant: Tenant, c: ReadCase): Promise<Explained> {
  const statements: { text: string; values: unknown[] }[] = [];
  const recorder = {
    query: (text: string, values: unknown[]) => {
      statements.push({ text, values });
      return db.query(text, values);
    },
  } as unknown as Queryable;
  if (c.call === "get") {
    const { rows } = await db.query<{ id: string }>("SELECT id FROM jobs WHERE tenant_id = $1 ORDER BY id LIMIT 1", [tenant.id]);
    await loadJob(recorder, tenant.id, rows[0].id);
  } else {
    const pageToken = c.deep ? await deepToken(db, mesh, tenant, c.filter!) : "";
    const page = await listJobs(recorder, mesh.infra.pageTokens, tenant.id, { pageSize: 0, pageToken, filter: c.filter!, orderBy: "" });
    await selectAttempts(recorder, tenant.id, page.rows.map((r) => r.id));
  }
  const explained: Explained = { buffers: 0, executionMs: 0, plan: [] };
  for (const s of statements) {
    const { rows } = await db.query<{ "QUERY PLAN": string }>(`EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) ${s.text}`, s.values);
    const lines = rows.map((r) => r["QUERY PLAN"]);
    // The first Buffers line belongs to the top node, whose counts include its children's.
    const top = /shared hit=(\d+)(?: read=(\d+))?/.exec(lines.find((l) => l.includes("Buffers: shared")) ?? "");
    explained.buffers += top ? Number(top[1]) + Number(top[2] ?? 0) : 0;
    explained.executionMs += Number(/Execution Time: ([\d.]+) ms/.exec(lines.at(-1) ?? "")?.[1] ?? NaN);
    // Long literal lists (the page's job ids) are cut: the plan's shape is what the report is for.
    const cut = (line: string) => (line.length > 150 ? `${line.slice(0, 150)}…` : line);
    explained.plan.push(cut(s.text.replace(/\s+/g, " ").replace(/^SELECT .*? FROM/, "SELECT … FROM")), ...lines.map((l) => `  ${cut(l)}`));
  }
  return explained;
}

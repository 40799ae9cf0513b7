/**
 * Entry "audit" (issue 12): what recording every call costs the services, and whether storing
 * the events keeps up with them.
 *
 * 1. GetPipeline (a Redis cache hit) on two PipelineService servers of one test mesh: the default
 *    one, whose chain has the audit interceptor, and a second one served with `{ audit: [] }`.
 *    Same process, same client (Connect binary over h2c, an admin's JWT on every call), sides
 *    alternating round by round as in the pipelines entry. The store is not running here: these
 *    rows are the cost of recording (building the event, publishing it to JetStream), nothing else.
 * 2. The store's sustained insert rate: 50,000 events (copies of one the audited server recorded
 *    in step 1, new ids and times) published through the real sink while the store is stopped,
 *    then the store started and timed until it has stored them all.
 * 3. Lag under the mesh's maximum RPC rate: the store running in this process (as `jobmesh up`
 *    runs it), GetPipeline with audit on at concurrency 64, and the store consumer's pending
 *    count (num_pending + num_ack_pending) sampled every 250 ms; then how long it takes to drain.
 *
 * The audit streams of the mesh's namespace are purged between the steps (once everything in
 * them is stored or irrelevant), so that the test-sized streams never fill up.
 */
import { clone, create, fromBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { PrincipalKind } from "../gen/jobmesh/v1/auth_pb.js";
import { AuditEventSchema, type AuditEvent } from "../gen/jobmesh/v1/audit_pb.js";
import { startAuditStore } from "../internal/audit/consumer.ts";
import { createAuditSink, type AuditSink } from "../internal/audit/sink.ts";
import { createAuditTopology, provisionAuditTopology, type AuditTopology } from "../internal/bus/topology.ts";
import { connectBus, type Bus } from "../internal/bus/index.ts";
import { servePipelines } from "../internal/mesh/servers.ts";
import { startTestMesh } from "../test/support/mesh.ts";
import type { BenchContext, BenchEntry, LoadResult } from "./harness.ts";
import { getPipelineCall, protocols, type GetPipelineArgs } from "./pipelines-client.ts";
import { formatComparison, formatTable, type ComparisonRow } from "./table.ts";

const pipelineName = "pipelines/document-default";
const concurrencies = [1, 64];
const lagConcurrency = 64;
const storeEvents = 50_000;
/** Events recorded between two sink flushes while pre-publishing: a batch the sink holds at once. */
const publishChunk = 5_000;
const lagSampleMs = 250;
/** "Bounded" means the consumer is back at zero this soon after the load stops. */
const drainBoundMs = 10_000;
const clientModule = new URL("./pipelines-client.ts", import.meta.url).href;

type Store = Awaited<ReturnType<typeof startAuditStore>>;

export const auditEntry: BenchEntry = {
  name: "audit",
  async run(ctx) {
    ctx.progress("audit: starting jobmesh (own database and namespace)");
    const mesh = await startTestMesh({ JOBMESH_LOG_LEVEL: "silent" }, { recordSpans: false });
    const { infra } = mesh;
    const topology = createAuditTopology(infra.config.namespace);
    // The bench's own NATS connection, for its publisher and the store (as another process would
    // have) and to remove the audit streams after the mesh has closed.
    const bus = await connectBus({ url: infra.config.natsUrl, name: "jobmesh-bench-audit", log: infra.log });
    let sink: AuditSink | undefined;
    let store: Store | undefined;
    const unaudited = await servePipelines(infra, 0, mesh.auth ? "enforce" : "bootstrap", { audit: [] });
    try {
      await provisionAuditTopology(topology, bus.jsm, { streamMaxBytes: infra.config.streamMaxBytes });
      const headers = mesh.auth ? await mesh.auth.headersFor("admin") : {};
      const call = (baseUrl: string): GetPipelineArgs => ({ protocol: "connect-h2c", baseUrl, name: pipelineName, headers });
      // The first read misses and fills Redis; every measured call is then a cache hit.
      await getOnce(call(mesh.pipelines.url));

      // 1. Audit on vs off.
      const rows: ComparisonRow[] = [];
      for (const concurrency of concurrencies) {
        const sides = { on: mesh.pipelines.url, off: unaudited.url };
        const results: Partial<Record<keyof typeof sides, LoadResult>> = {};
        for (let round = 0; round < ctx.timing.rounds; round++) {
          const order = round % 2 === 0 ? (["off", "on"] as const) : (["on", "off"] as const);
          for (const side of order) {
            ctx.progress(`audit: ${side}, concurrency ${concurrency}, round ${round + 1}/${ctx.timing.rounds}`);
            const options = { concurrency, warmupMs: ctx.timing.warmupMs, durationMs: ctx.timing.durationMs };
            results[side] = await ctx.load.run({ module: clientModule, factory: "getPipelineCall", args: call(sides[side]), options, series: `audit/${concurrency}/${side}` });
          }
        }
        rows.push({ call: "GetPipeline (cache hit)", protocol: protocols["connect-h2c"], concurrency, subject: results.on!, baseline: results.off! });
      }
      const recorded = (await bus.jsm.streams.info(topology.eventsStream)).state.messages;
      const template = await recordedEvent(bus, topology, infra.bootstrapTenantId);
      await bus.jsm.streams.purge(topology.eventsStream);

      // 2. The store's insert rate over a backlog.
      ctx.progress(`audit: publishing ${storeEvents} events through the sink (store stopped)`);
      await mkdir(infra.config.audit.spoolDir, { recursive: true });
      sink = await createAuditSink({ nc: bus.nc, js: bus.js, topology, spoolFile: join(infra.config.audit.spoolDir, "bench.spool"), log: infra.log });
      const publishStart = performance.now();
      for (let i = 0; i < storeEvents; i++) {
        sink.record(copyOf(template.event));
        if ((i + 1) % publishChunk === 0) await sink.flush();
      }
      await sink.flush();
      const publishSeconds = (performance.now() - publishStart) / 1000;
      const backlog = await consumerLag(bus, topology);
      ctx.progress(`audit: starting the store over a backlog of ${backlog}`);
      const storeStart = performance.now();
      const startedStore: Store = await startAuditStore({
        db: infra.db,
        js: bus.js,
        jsm: bus.jsm,
        topology,
        keyEncryptionKey: randomBytes(32),
        log: infra.log,
        unattributedTenantId: infra.bootstrapTenantId,
        checkpointIntervalMs: infra.config.audit.checkpointIntervalMs,
        retentionDays: infra.config.audit.retentionDays,
      });
      store = startedStore;
      const storeReady = performance.now();
      await until(() => startedStore.stored() >= BigInt(storeEvents), 300_000, "the store to store the backlog");
      const storeDone = performance.now();
      const insertRate = storeEvents / ((storeDone - storeReady) / 1000);
      await until(async () => (await consumerLag(bus, topology)) === 0, 30_000, "the store consumer to acknowledge the backlog");
      const rowsStored = (await infra.db.query<{ n: number }>("SELECT count(*)::int AS n FROM audit_event_ids")).rows[0]!.n;
      await bus.jsm.streams.purge(topology.eventsStream);

      // 3. Lag while the mesh serves as fast as it can, the store running.
      const lag = await measureLag(ctx, bus, topology, startedStore, call(mesh.pipelines.url));

      const memory = process.memoryUsage();
      const comparison = formatComparison({
        title: "GetPipeline with the audit interceptor (on) vs without (off): two PipelineService servers of one mesh, same client",
        subjectName: "on",
        baselineName: "off",
        rows,
        notes: [
          `ratio = on req/s / off req/s (target >= 0.85x); per cell and side ${ctx.timing.rounds} x ${ctx.timing.durationMs / 1000}s, sides alternating, ` +
            `each round after ${ctx.timing.warmupMs / 1000}s warm-up on a new connection; the store is not running in these rows`,
          `identity: ${mesh.auth ? "enforced, an admin's JWT on every call" : "bootstrap (no credentials)"}; ` +
            `the audited server published ${recorded} events (warm-ups included) for ${rows.reduce((n, r) => n + r.subject.requests, 0)} measured calls`,
          // On a busy machine req/s swings with the neighbours; CPU per call much less.
          `server CPU per call, on/off: ${rows.map((r) => `${cpuRatio(r)} at c=${r.concurrency}`).join(", ")}`,
        ],
      });
      const storeTable = formatTable(
        [{ header: "store (cmd/audit's consumer, in this process)" }, { header: "value", align: "right" }, { header: "" }],
        [
          ["sustained insert rate", `${Math.round(insertRate)} events/s`, `${storeEvents} events of ${template.source}, one tenant, stored in ${seconds(storeDone - storeReady)} (start ${seconds(storeReady - storeStart)}); ${rowsStored} event ids in Postgres`],
          ["sink publish rate (pre-publishing them)", `${Math.round(storeEvents / publishSeconds)} events/s`, `flushed every ${publishChunk}; ${sink.spooled} spooled`],
          [`GetPipeline, audit on, c=${lagConcurrency}, store running`, `${Math.round(lag.load.rps)} req/s`, `p50 ${lag.load.p50.toFixed(2)} ms, p99 ${lag.load.p99.toFixed(2)} ms, ${lag.load.errors} errors, ${seconds(lag.loadMs)} incl. warm-up`],
          ["stored during that load", `${Math.round(lag.storedPerSecond)} events/s`, `${lag.stored} events`],
          [`consumer lag (every ${lagSampleMs} ms)`, `max ${lag.max}`, `${lag.samples} samples; ${lag.atLoadEnd} when the load stopped`],
          ["insert rate / that RPC rate", `${(insertRate / lag.load.rps).toFixed(1)}x`, "the store's headroom over everything the audited server served"],
          ["drain after the load stopped", lag.drainMs === undefined ? "not drained" : seconds(lag.drainMs), lag.drainMs !== undefined && lag.drainMs <= drainBoundMs ? `bounded (back to 0 within ${drainBoundMs / 1000}s)` : `NOT bounded (${drainBoundMs / 1000}s)`],
        ],
      );
      return [
        comparison,
        "",
        storeTable,
        `  server process RSS after the last run: ${mib(memory.rss)} (heap used ${mib(memory.heapUsed)}); mesh, store and both servers share the process, the load runs in another`,
        ...(lag.load.firstError ? [`  error: lag load: ${lag.load.firstError}`] : []),
      ].join("\n");
    } finally {
      await store?.stop();
      await sink?.close();
      await unaudited.close();
      await mesh.close();
      await removeAuditStreams(bus, topology);
      await bus.close();
      await rm(infra.config.audit.spoolDir, { recursive: true, force: true });
    }
  },
};

interface LagMeasurement {
  load: LoadResult;
  loadMs: number;
  max: number;
  atLoadEnd: number;
  samples: number;
  drainMs?: number;
  stored: bigint;
  storedPerSecond: number;
}

/** Step 3: the closed loop at `lagConcurrency` for the whole window, the consumer sampled throughout. */
async function measureLag(ctx: BenchContext, bus: Bus, topology: AuditTopology, store: Store, args: GetPipelineArgs): Promise<LagMeasurement> {
  // Long enough for a consumer that falls behind to show a growing lag, not just a burst.
  const durationMs = Math.max(3_000, 3 * ctx.timing.rounds * ctx.timing.durationMs);
  ctx.progress(`audit: lag under load, concurrency ${lagConcurrency}, ${durationMs / 1000}s`);
  const storedBefore = store.stored();
  const startedAt = performance.now();
  let loading = true;
  let max = 0;
  let samples = 0;
  const sampler = (async () => {
    while (loading) {
      max = Math.max(max, await consumerLag(bus, topology));
      samples++;
      await sleep(lagSampleMs);
    }
  })();
  const options = { concurrency: lagConcurrency, warmupMs: ctx.timing.warmupMs, durationMs };
  const load = await ctx.load.run({ module: clientModule, factory: "getPipelineCall", args, options }).finally(() => (loading = false));
  const stoppedAt = performance.now();
  await sampler;
  const atLoadEnd = await consumerLag(bus, topology);
  max = Math.max(max, atLoadEnd);
  const stored = store.stored() - storedBefore;
  let drainMs: number | undefined;
  try {
    await until(async () => (await consumerLag(bus, topology)) === 0, 60_000, "the lag to drain");
    drainMs = performance.now() - stoppedAt;
  } catch {
    // Reported as not drained.
  }
  return { load, loadMs: stoppedAt - startedAt, max, atLoadEnd, samples, drainMs, stored, storedPerSecond: Number(stored) / ((stoppedAt - startedAt) / 1000) };
}

/** Events the store consumer has not acknowledged: not yet delivered plus delivered and unacknowledged. */
async function consumerLag(bus: Bus, topology: AuditTopology): Promise<number> {
  const info = await bus.jsm.consumers.info(topology.eventsStream, topology.storeConsumer);
  return info.num_pending + info.num_ack_pending;
}

/** The last event the audited server published, as the model of the backlog; a made-up one if there is none. */
async function recordedEvent(bus: Bus, topology: AuditTopology, tenantId: string): Promise<{ event: AuditEvent; source: string }> {
  const last = (await bus.jsm.streams.info(topology.eventsStream)).state.last_seq;
  const message = last > 0 ? await bus.jsm.streams.getMessage(topology.eventsStream, { seq: last }) : null;
  if (message) return { event: fromBinary(AuditEventSchema, message.data), source: `a recorded ${message.data.length}-byte event` };
  const event = create(AuditEventSchema, {
    tenant: tenantId,
    actor: { subject: `users/${randomUUID()}`, kind: PrincipalKind.USER, roles: ["admin"], credentialHint: "jwt:bench" },
    action: "jobmesh.v1.PipelineService.GetPipeline",
    resource: pipelineName,
    resourceType: "jobmesh.v1.Pipeline",
    outcome: { code: 0 },
    clientAddress: "127.0.0.1",
    userAgent: "connect-es/2.2.0",
    duration: { seconds: 0n, nanos: 250_000 },
    request: JSON.stringify({ name: pipelineName }),
    recorder: "bench",
  });
  return { event, source: "a made-up event (the audited server published none)" };
}

/** The template as a new event: its own id and time, the rest identical. */
function copyOf(template: AuditEvent): AuditEvent {
  const event = clone(AuditEventSchema, template);
  event.name = `auditEvents/${randomUUID()}`;
  event.requestId = randomUUID();
  event.eventTime = timestampFromDate(new Date());
  return event;
}

async function removeAuditStreams(bus: Bus, topology: AuditTopology): Promise<void> {
  for (const stream of [topology.eventsStream, topology.checkpointsStream]) await bus.jsm.streams.delete(stream).catch(() => false);
}

async function getOnce(args: GetPipelineArgs): Promise<void> {
  const { call, close } = getPipelineCall(args);
  try {
    await call();
  } finally {
    await close?.();
  }
}

/** Polls `condition` until it holds; throws naming what it waited for after `timeoutMs`. */
async function until(condition: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await condition())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
    await sleep(20);
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MiB`;
const cpuRatio = (r: ComparisonRow) => {
  const perCall = (l: LoadResult) => (l.serverCpu === undefined || l.rps === 0 ? NaN : l.serverCpu / l.rps);
  const ratio = perCall(r.subject) / perCall(r.baseline);
  return Number.isFinite(ratio) ? `${ratio.toFixed(2)}x` : "-";
};

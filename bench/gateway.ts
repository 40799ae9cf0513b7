/**
 * Entry "gateway": GetPipeline as REST through the Deno gateway (`GET /v1/pipelines/...` with an
 * admin's bearer token) vs Connect straight to the pipelines service, same run, same concurrency.
 *
 * jobmesh runs in this process as the tests start it (own database and namespace, identity
 * enforced, the services trusting 127.0.0.2), and the gateway runs as its own Deno process in
 * front of it, connecting from 127.0.0.2 as a deployment does. Every call is a cache hit in the
 * service, so the gateway's hop is most of what differs. Each row loads the gateway and the
 * service directly in alternating rounds, never both at once.
 *
 * The REST side is always the same client: an undici keep-alive pool with a connection per
 * worker, parsing the JSON answer. The rows differ in the direct side: Connect JSON over the same
 * undici pool (the fairest: same client, same encoding), then the connect-node clients of the
 * pipelines entry (binary over HTTP/1.1, binary over h2c).
 *
 * The gateway's own CPU and memory are read from /proc, since it is not this process: its RSS
 * idle and its peak under load, and its CPU while loaded.
 */
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { denoBinary, startGatewayProcess, type GatewayProcess } from "../internal/mesh/gateway-process.ts";
import { startTestMesh, type TestMesh } from "../test/support/mesh.ts";
import type { HttpGetPipelineArgs } from "./gateway-client.ts";
import type { BenchContext, BenchEntry, LoadOptions, LoadResult, LoadSpec } from "./harness.ts";
import { protocols, type GetPipelineArgs } from "./pipelines-client.ts";
import { formatComparison, formatTable, type ComparisonRow } from "./table.ts";

const pipelineName = "pipelines/document-default";
const concurrencies = [1, 64];
const gatewayClient = new URL("./gateway-client.ts", import.meta.url).href;
const pipelinesClient = new URL("./pipelines-client.ts", import.meta.url).href;
/** The targets: REST through the gateway keeps this share of the direct throughput and adds at most this much to the median. */
const targetRatio = 0.8;
const targetAddedP50Ms = 1.5;
/**
 * The gateway's default: one access-log line per request, as a deployment runs it ("warn" would
 * leave the line out and measure a gateway nobody runs).
 */
const gatewayLogLevel: "info" | "warn" = "info";
/** How the floor's rows are named in the tables. */
const floorLabel = "bare Deno proxy (floor)";
const floorProxyScript = fileURLToPath(new URL("./gateway-floor-proxy.ts", import.meta.url));
/** A rate no bench reaches, so the gateway's limiter (still consulted on every call) never refuses one. */
const unlimitedRate = "1000000";
const unlimitedBurst = "10000000";

export const gatewayEntry: BenchEntry = {
  name: "gateway",
  async run(ctx) {
    ctx.progress("gateway: starting jobmesh (own database and namespace) and the Deno gateway");
    const mesh = await startTestMesh({ JOBMESH_LOG_LEVEL: "silent", JOBMESH_TRUSTED_PROXIES: "127.0.0.2" }, { auth: true, recordSpans: false });
    let gateway: GatewayProcess | undefined;
    let floor: FloorProxy | undefined;
    try {
      const headers = await mesh.auth!.headersFor("admin");
      gateway = await startGatewayProcess(gatewayEnv(mesh));
      const rssAtStart = await rssOf(gateway.pid);
      // The first read misses and fills Redis; every measured call is then a cache hit.
      await checkRestAnswer(gateway.url, headers);
      const rssIdle = await rssOf(gateway.pid);
      const sampler = createProcessSampler(gateway.pid);
      const rows: TargetRow[] = [];
      const direct = baselinesFor(mesh.pipelines.url, headers);

      for (const baseline of direct) {
        for (const concurrency of concurrencies) {
          const options: LoadOptions = { concurrency, warmupMs: ctx.timing.warmupMs, durationMs: ctx.timing.durationMs };
          const rest: HttpGetPipelineArgs = { baseUrl: gateway.url, name: pipelineName, headers, connections: concurrency };
          const row = await compareSides(ctx, sampler, `${baseline.label}, concurrency ${concurrency}`, {
            subject: { module: gatewayClient, factory: "restGetPipelineCall", args: rest, options, series: `gateway/${baseline.key}/${concurrency}/rest` },
            direct: { module: baseline.module, factory: baseline.factory, args: baseline.args(concurrency), options, series: `gateway/${baseline.key}/${concurrency}/direct` },
          });
          rows.push({ call: "GetPipeline (cache hit)", protocol: `vs ${baseline.label}`, concurrency, ...row });
        }
      }

      // The floor: the same Connect JSON call through a proxy that does nothing but forward it,
      // against the same direct side, so the gap splits into the hop and the gateway's own work.
      ctx.progress("gateway: starting the bare Deno proxy (floor)");
      floor = await startFloorProxy(mesh.pipelines.url);
      const floorSampler = createProcessSampler(floor.pid);
      const fairest = direct[0]!;
      const floorRows: TargetRow[] = [];
      for (const concurrency of concurrencies) {
        const options: LoadOptions = { concurrency, warmupMs: ctx.timing.warmupMs, durationMs: ctx.timing.durationMs };
        const row = await compareSides(ctx, floorSampler, `bare Deno proxy (floor), concurrency ${concurrency}`, {
          subject: {
            module: gatewayClient,
            factory: "connectJsonGetPipelineCall",
            args: { baseUrl: floor.url, name: pipelineName, headers, connections: concurrency } satisfies HttpGetPipelineArgs,
            options,
            series: `gateway/floor/${concurrency}/proxy`,
          },
          direct: { module: fairest.module, factory: fairest.factory, args: fairest.args(concurrency), options, series: `gateway/floor/${concurrency}/direct` },
        });
        floorRows.push({ call: "GetPipeline (cache hit)", protocol: `${floorLabel}, vs ${fairest.label}`, concurrency, ...row });
      }
      const rssAfter = await rssOf(gateway.pid);
      const log = gateway.output().trim().split("\n");

      return [
        formatComparison({
          title:
            "GetPipeline: REST/JSON through the Deno gateway (undici keep-alive pool, GET /v1/pipelines/document-default) " +
            "vs Connect straight to the pipelines service (same run, same concurrency)",
          subjectName: "gateway",
          baselineName: "direct",
          rows: [...rows, ...floorRows],
          notes: [
            `the last rows' subject is not the gateway but the ${floorLabel}: the same Connect JSON call as the direct side, ` +
              `forwarded by Deno.serve → fetch (same HTTP client set-up as the gateway) and nothing else`,
            `per cell and side ${ctx.timing.rounds} x ${ctx.timing.durationMs / 1000}s, sides alternating, each round after ` +
              `${ctx.timing.warmupMs / 1000}s warm-up on new connections (the REST pool opens one per worker)`,
            `"srv" CPU is this process's, where the pipelines service runs (both sides call it); the gateway's own CPU is in the table below`,
            `identity enforced: an admin's JWT on every call, verified by the gateway (JWKS, locally) and again by the service; ` +
              `the gateway's rate limiter is consulted on every call (Redis), with limits of ${unlimitedRate}/s so it never refuses`,
          ],
        }),
        "",
        formatTargets(rows, floorRows),
        `  gateway process RSS: ${mib(rssAtStart)} after start, ${mib(rssIdle)} idle before load (after one request), ` +
          `${maxRss(sampler, 64)} peak under load at concurrency 64 (${maxRss(sampler, 1)} at 1), ${mib(rssAfter)} after the last run`,
        `  the gateway ran with JOBMESH_LOG_LEVEL=${gatewayLogLevel}: ` +
          (gatewayLogLevel === "info" ? "one access-log line per request, written to a pipe this process reads" : "no access-log line per request") +
          ` (${log.length} lines printed in all)`,
      ].join("\n");
    } finally {
      await floor?.stop();
      await gateway?.stop();
      await mesh.close();
    }
  },
};

/** A row of the targets table: a comparison and the CPU of the proxy process (the gateway, or the floor) while its side ran. */
type TargetRow = ComparisonRow & { gatewayCpu: number };

/**
 * Loads the subject (through a proxy process: the gateway or the floor) and the direct side in
 * alternating rounds, never both at once, sampling the proxy's CPU while its side runs.
 */
async function compareSides(
  ctx: BenchContext,
  sampler: ProcessSampler,
  label: string,
  specs: { subject: LoadSpec & { series: string }; direct: LoadSpec },
): Promise<Pick<TargetRow, "subject" | "baseline" | "gatewayCpu">> {
  const results: Partial<Record<keyof typeof specs, LoadResult>> = {};
  for (let round = 0; round < ctx.timing.rounds; round++) {
    // Alternate which side goes first, so neither always follows the other.
    const order = round % 2 === 0 ? (["direct", "subject"] as const) : (["subject", "direct"] as const);
    for (const side of order) {
      ctx.progress(`gateway: ${side === "subject" ? "through the proxy" : "direct"}, ${label}, round ${round + 1}/${ctx.timing.rounds}`);
      if (side === "direct") results.direct = await ctx.load.run(specs.direct);
      else results.subject = await sampler.during(specs.subject.series, specs.subject.options.concurrency, () => ctx.load.run(specs.subject));
    }
  }
  return { subject: results.subject!, baseline: results.direct!, gatewayCpu: sampler.cpuOf(specs.subject.series) };
}

interface FloorProxy {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/** Starts bench/gateway-floor-proxy.ts in front of `upstream`, connecting from 127.0.0.2 as the gateway does, and waits until it serves. */
async function startFloorProxy(upstream: string): Promise<FloorProxy> {
  const child = spawn(denoBinary, ["run", "--allow-net", "--allow-env", floorProxyScript], {
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1", FLOOR_UPSTREAM_URL: upstream, FLOOR_SOURCE_ADDRESS: "127.0.0.2" },
    // Its stderr too: Deno's warnings are kept for the error message, not mixed into the bench's progress.
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  const read = (chunk: Buffer) => {
    output = (output + chunk.toString("utf8")).slice(-4000);
  };
  child.stdout.on("data", read);
  child.stderr.on("data", read);
  const exited = new Promise<void>((resolve) => child.once("close", () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
    }
  };
  try {
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("the bare Deno proxy did not serve within 30 s")), 30_000);
      child.stdout.on("data", () => {
        const serving = /\{"msg":"serving","url":"([^"]+)"\}/.exec(output);
        if (serving) {
          clearTimeout(timer);
          resolve(serving[1]!);
        }
      });
      void exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`the bare Deno proxy exited before serving: ${output.slice(-500)}`));
      });
    });
    return { url, pid: child.pid!, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

interface Baseline {
  /** Series key. */
  key: string;
  label: string;
  module: string;
  factory: string;
  args(concurrency: number): HttpGetPipelineArgs | GetPipelineArgs;
}

/** The direct sides, the fairest first: same client and encoding as the REST side, then the pipelines entry's connect-node clients. */
function baselinesFor(serviceUrl: string, headers: Record<string, string>): Baseline[] {
  return [
    {
      key: "connect-json-undici",
      label: "Connect JSON, HTTP/1.1 (undici)",
      module: gatewayClient,
      factory: "connectJsonGetPipelineCall",
      args: (connections) => ({ baseUrl: serviceUrl, name: pipelineName, headers, connections }),
    },
    ...(["connect-http1", "connect-h2c"] as const).map((protocol) => ({
      key: protocol,
      label: `${protocols[protocol]} (connect-node)`,
      module: pipelinesClient,
      factory: "getPipelineCall",
      args: () => ({ protocol, baseUrl: serviceUrl, name: pipelineName, headers }),
    })),
  ];
}

/** The gateway's environment: the test mesh's backends and Redis namespace, quiet logs, limits out of the way. */
function gatewayEnv(mesh: TestMesh): Record<string, string> {
  return {
    JOBMESH_GATEWAY_PORT: "0",
    JOBMESH_HOST: "127.0.0.1",
    JOBMESH_PIPELINES_URL: mesh.pipelines.url,
    JOBMESH_AUTH_URL: mesh.auth!.server.url,
    // Not served by this mesh; a closed port rather than a default some other mesh may own.
    JOBMESH_JOBS_URL: "http://127.0.0.1:1",
    REDIS_URL: mesh.isolated.config.redisUrl,
    JOBMESH_NAMESPACE: mesh.isolated.namespace,
    JOBMESH_GATEWAY_SOURCE_ADDRESS: "127.0.0.2",
    JOBMESH_LOG_LEVEL: gatewayLogLevel,
    ...Object.fromEntries(
      ["TENANT", "CREDENTIAL", "ADDRESS"].flatMap((what) => [
        [`JOBMESH_GATEWAY_RATE_PER_${what}`, unlimitedRate],
        [`JOBMESH_GATEWAY_BURST_PER_${what}`, unlimitedBurst],
      ]),
    ),
  };
}

/** Measuring a broken route would time error answers: the REST answer must be 200 and carry the pipeline. */
async function checkRestAnswer(gatewayUrl: string, headers: Record<string, string>): Promise<void> {
  const response = await fetch(new URL(`/v1/${pipelineName}`, gatewayUrl), { headers });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`GET /v1/${pipelineName} through the gateway answered ${response.status}: ${text.slice(0, 500)}`);
  const body = JSON.parse(text) as { pipeline?: { name?: string } };
  if (body.pipeline?.name !== pipelineName) throw new Error(`GET /v1/${pipelineName} through the gateway answered without the pipeline: ${text.slice(0, 500)}`);
}

interface ProcessSampler {
  /** Runs `load` while sampling the process's RSS (pooled by concurrency) and its CPU (pooled by series). */
  during<T>(series: string, concurrency: number, load: () => Promise<T>): Promise<T>;
  /** CPU of the process in cores over the series' runs (warm-up included). */
  cpuOf(series: string): number;
  /** Largest RSS seen under load at this concurrency, in bytes (0 if never sampled). */
  maxRssAt(concurrency: number): number;
}

/** Reads another process's RSS and CPU from /proc while it is loaded (Linux only, as the bench machine is). */
function createProcessSampler(pid: number): ProcessSampler {
  const cpu = new Map<string, { cpuSeconds: number; seconds: number }>();
  const rss = new Map<number, number>();
  const noteRss = async (concurrency: number) => {
    const bytes = await rssOf(pid).catch(() => 0);
    rss.set(concurrency, Math.max(rss.get(concurrency) ?? 0, bytes));
  };
  return {
    async during(series, concurrency, load) {
      const cpuAtStart = await cpuSecondsOf(pid);
      const startedAt = performance.now();
      const timer = setInterval(() => void noteRss(concurrency), 100);
      try {
        return await load();
      } finally {
        clearInterval(timer);
        await noteRss(concurrency);
        const run = { cpuSeconds: (await cpuSecondsOf(pid)) - cpuAtStart, seconds: (performance.now() - startedAt) / 1000 };
        const pooled = cpu.get(series);
        if (pooled) {
          pooled.cpuSeconds += run.cpuSeconds;
          pooled.seconds += run.seconds;
        } else cpu.set(series, run);
      }
    },
    cpuOf(series) {
      const pooled = cpu.get(series);
      return pooled ? pooled.cpuSeconds / pooled.seconds : NaN;
    },
    maxRssAt: (concurrency) => rss.get(concurrency) ?? 0,
  };
}

/** VmRSS of a process, in bytes. */
async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!kib) throw new Error(`/proc/${pid}/status has no VmRSS line`);
  return Number(kib[1]) * 1024;
}

/** User + system CPU time of a process so far, in seconds (utime and stime of /proc/<pid>/stat, in clock ticks of 1/100 s). */
async function cpuSecondsOf(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/**
 * The targets, per row: the throughput ratio and the latency the gateway adds to the
 * median; then the floor's rows (the hop alone, judged by the same targets), and what the gateway
 * spends per call beyond it.
 */
function formatTargets(rows: TargetRow[], floorRows: TargetRow[]): string {
  const mark = (ok: boolean) => (ok ? "yes" : "NO");
  const perCall = (r: TargetRow) => (Number.isFinite(r.gatewayCpu) && r.subject.rps > 0 ? (r.gatewayCpu * 1e6) / r.subject.rps : NaN);
  const line = (through: string, r: TargetRow) => {
    const ratio = r.baseline.rps > 0 ? r.subject.rps / r.baseline.rps : NaN;
    const addedP50 = r.subject.p50 - r.baseline.p50;
    return [
      through,
      r.protocol.replace(/^.*vs /, ""),
      String(r.concurrency),
      Number.isFinite(ratio) ? `${ratio.toFixed(2)}x` : "-",
      Number.isFinite(ratio) ? mark(ratio >= targetRatio) : "-",
      Number.isFinite(addedP50) ? addedP50.toFixed(2) : "-",
      Number.isFinite(addedP50) ? mark(addedP50 <= targetAddedP50Ms) : "-",
      Number.isFinite(r.subject.p99 - r.baseline.p99) ? (r.subject.p99 - r.baseline.p99).toFixed(2) : "-",
      Number.isFinite(r.gatewayCpu) ? `${Math.round(r.gatewayCpu * 100)}%` : "-",
      Number.isFinite(perCall(r)) ? Math.round(perCall(r)).toString() : "-",
      `${r.subject.errors}/${r.baseline.errors}`,
    ];
  };
  const table = formatTable(
    [
      { header: "through" },
      { header: "direct side" },
      { header: "conc", align: "right" },
      { header: "through/direct", align: "right" },
      { header: `>= ${targetRatio.toFixed(2)}x`, align: "right" },
      { header: "added p50 ms", align: "right" },
      { header: `<= ${targetAddedP50Ms} ms`, align: "right" },
      { header: "added p99 ms", align: "right" },
      { header: "proxy cpu", align: "right" },
      { header: "proxy us/call", align: "right" },
      { header: "errors through/direct", align: "right" },
    ],
    [...rows.map((r) => line("gateway (REST)", r)), ...floorRows.map((r) => line(floorLabel, r))],
  );
  // The gateway's own work: its CPU per call beyond the floor's, both against Connect JSON over undici.
  const own = floorRows.map((floorRow) => {
    const gatewayRow = rows.find((r) => r.concurrency === floorRow.concurrency && floorRow.protocol.endsWith(r.protocol));
    const extra = gatewayRow ? perCall(gatewayRow) - perCall(floorRow) : NaN;
    return `${Number.isFinite(extra) ? Math.round(extra) : "-"} us at ${floorRow.concurrency}`;
  });
  return [
    "Against the issue's targets (through the gateway, or through the bare proxy, vs the direct side of each row)",
    "",
    table,
    `  proxy cpu: the CPU of the process in the middle (the Deno gateway, or the bare Deno proxy) while its side was loaded ` +
      `(warm-up included), in % of one core; at or near 100% its event loop is the bottleneck; proxy us/call: that CPU per call ` +
      `(about: the CPU includes the warm-up, the calls do not)`,
    `  the gateway's own work per call, beyond what any proxy process pays (gateway us/call minus floor us/call, both vs ` +
      `Connect JSON over undici): ${own.join(", ")}`,
  ].join("\n");
}

const maxRss = (sampler: ProcessSampler, concurrency: number) => {
  const bytes = sampler.maxRssAt(concurrency);
  return bytes === 0 ? "-" : mib(bytes);
};

const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MiB`;


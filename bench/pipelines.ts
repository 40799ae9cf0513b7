/**
 * Entry "pipelines": GetPipeline answered from the Redis cache, against a bare connect-node
 * server that answers the same RPC with a constant response and no I/O.
 *
 * jobmesh runs in this process the way the tests start it (own database and namespace, the
 * pipelines server on a free port, log level silent). The bare server returns the very message
 * jobmesh returned for `pipelines/document-default`, so both send the same bytes; it listens with
 * `http2.createServer` for the h2c rows and `http.createServer` for the HTTP/1.1 row. Each row
 * loads the bare server and jobmesh in alternating rounds with the same client settings, never
 * both at once; both idle in this process while the other is loaded.
 *
 * jobmesh identifies callers the way services do by default: when they enforce identity, every
 * call carries an admin's access token. Both sides get the same headers (the bare server ignores
 * them), so the requests are the same bytes too.
 */
import { create } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { GetPipelineResponseSchema, PipelineService, type GetPipelineResponse } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "../test/support/mesh.ts";
import type { BenchEntry, LoadOptions, LoadResult } from "./harness.ts";
import { getPipelineCall, protocols, type GetPipelineArgs, type Protocol } from "./pipelines-client.ts";
import { formatComparison, type ComparisonRow } from "./table.ts";

const pipelineName = "pipelines/document-default";
const concurrencies = [1, 64];
const clientModule = new URL("./pipelines-client.ts", import.meta.url).href;

export const pipelinesEntry: BenchEntry = {
  name: "pipelines",
  async run(ctx) {
    ctx.progress("pipelines: starting jobmesh (own database and namespace)");
    const rssBefore = process.memoryUsage().rss;
    const mesh = await startTestMesh({ JOBMESH_LOG_LEVEL: "silent" });
    try {
      // Set when services enforce identity by default (startTestMesh then serves AuthService).
      const headers = mesh.auth ? await mesh.auth.headersFor("admin") : {};
      // The first read misses and fills Redis; every measured call is then a cache hit.
      const response = await getOnce(mesh.pipelines.url, headers);
      const bare = await startBareServers(response);
      const rows: ComparisonRow[] = [];
      try {
        for (const protocol of Object.keys(protocols) as Protocol[]) {
          for (const concurrency of concurrencies) {
            const options: LoadOptions = { concurrency, warmupMs: ctx.timing.warmupMs, durationMs: ctx.timing.durationMs };
            const sides = {
              bare: protocol === "connect-http1" ? bare.http1Url : bare.h2cUrl,
              jobmesh: mesh.pipelines.url,
            };
            const results: Partial<Record<keyof typeof sides, LoadResult>> = {};
            for (let round = 0; round < ctx.timing.rounds; round++) {
              // Alternate which side goes first, so neither always follows the other.
              const order = round % 2 === 0 ? (["bare", "jobmesh"] as const) : (["jobmesh", "bare"] as const);
              for (const side of order) {
                ctx.progress(`pipelines: ${side}, ${protocols[protocol]}, concurrency ${concurrency}, round ${round + 1}/${ctx.timing.rounds}`);
                const args: GetPipelineArgs = { protocol, baseUrl: sides[side], name: pipelineName, headers };
                const series = `pipelines/${protocol}/${concurrency}/${side}`;
                results[side] = await ctx.load.run({ module: clientModule, factory: "getPipelineCall", args, options, series });
              }
              // The test mesh keeps finished spans in memory; drop them so they do not pile up.
              mesh.spans.reset();
            }
            const subject = results.jobmesh!;
            const baseline = results.bare!;
            rows.push({ call: "GetPipeline (cache hit)", protocol: protocols[protocol], concurrency, subject, baseline });
          }
        }
      } finally {
        await bare.close();
      }
      const cache = await cacheCounts(mesh.pipelines.url);
      const memory = process.memoryUsage();
      return formatComparison({
        title: "GetPipeline: jobmesh pipelines server vs bare connect-node server (same client, same response bytes)",
        subjectName: "jobmesh",
        baselineName: "bare",
        rows,
        notes: [
          `ratio = jobmesh req/s / bare req/s (target >= 0.70x); per cell and side ${ctx.timing.rounds} x ${ctx.timing.durationMs / 1000}s, ` +
            `sides alternating, each round after ${ctx.timing.warmupMs / 1000}s warm-up on a new connection`,
          `jobmesh identity: ${mesh.auth ? "enforced, an admin's JWT on every call" : "bootstrap (no credentials)"}`,
          `jobmesh cache "pipelines": ${cache}`,
          `server process RSS after the last run: ${mib(memory.rss)} (heap used ${mib(memory.heapUsed)}, peak ${mib(process.resourceUsage().maxRSS * 1024)}, ` +
            `${mib(rssBefore)} before jobmesh started); jobmesh and the bare servers share the process, the load runs in another`,
        ],
      });
    } finally {
      await mesh.close();
    }
  },
};

async function getOnce(baseUrl: string, headers: Record<string, string>): Promise<GetPipelineResponse> {
  const { call, close } = getPipelineCall({ protocol: "connect-http1", baseUrl, name: pipelineName, headers });
  try {
    return (await call()) as GetPipelineResponse;
  } finally {
    await close?.();
  }
}

interface BareServers {
  h2cUrl: string;
  http1Url: string;
  close(): Promise<void>;
}

/** The baseline: PipelineService.GetPipeline returning a constant, no interceptors, no I/O. */
async function startBareServers(response: GetPipelineResponse): Promise<BareServers> {
  const constant = create(GetPipelineResponseSchema, response);
  const handler = connectNodeAdapter({
    routes(router: ConnectRouter) {
      router.service(PipelineService, { getPipeline: () => constant });
    },
  });
  const h2 = http2.createServer(handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (s) => {
    sessions.add(s);
    s.once("close", () => sessions.delete(s));
  });
  const h1 = http.createServer(handler);
  const listen = (server: http.Server | http2.Http2Server) =>
    new Promise<string>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`));
    });
  const h2cUrl = await listen(h2);
  const http1Url = await listen(h1);
  return {
    h2cUrl,
    http1Url,
    async close() {
      for (const s of sessions) s.destroy();
      h1.closeAllConnections();
      await Promise.all([new Promise((r) => h2.close(r)), new Promise((r) => h1.close(r))]);
    },
  };
}

/** Hits and misses of the pipelines cache, read from the server's own /metrics. */
async function cacheCounts(baseUrl: string): Promise<string> {
  const text = await (await fetch(new URL("/metrics", baseUrl))).text();
  const count = (metric: string) =>
    text
      .split("\n")
      .filter((l) => l.startsWith(metric) && l.includes('cache="pipelines"'))
      .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(" ") + 1)), 0);
  // A miss after the first read means a Redis call failed or timed out (it falls through to Postgres).
  return `${count("cache_hits")} hits, ${count("cache_misses")} misses, ${count("cache_errors")} Redis errors`;
}

const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MiB`;

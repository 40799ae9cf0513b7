/**
 * Entry "auth": what identity costs. GetPipeline (a Redis cache hit) over gRPC against two
 * pipelines servers on the same infrastructure in this process: one enforcing identity, called
 * with a JWT access token and with an API key, and one with auth off (the bootstrap-tenant
 * interceptor). Rounds alternate between the sides, never both at once.
 */
import { servePipelines } from "../internal/mesh/servers.ts";
import { startTestMesh } from "../test/support/mesh.ts";
import type { AuthedGetArgs } from "./auth-client.ts";
import type { BenchEntry, LoadOptions, LoadResult } from "./harness.ts";
import { formatComparison, type ComparisonRow } from "./table.ts";

const pipelineName = "pipelines/document-default";
const concurrencies = [1, 64];
const clientModule = new URL("./auth-client.ts", import.meta.url).href;

export const authEntry: BenchEntry = {
  name: "auth",
  async run(ctx) {
    ctx.progress("auth: starting jobmesh with AuthService (own database and namespace)");
    const mesh = await startTestMesh({ JOBMESH_LOG_LEVEL: "silent" }, { auth: true });
    const open = await servePipelines(mesh.infra, 0, "bootstrap");
    try {
      const auth = mesh.auth!;
      const token = await auth.tokenFor("viewer");
      const { secret } = await auth.client.createApiKey({ apiKey: { displayName: "bench" } }, { headers: await auth.headersFor("admin") });
      const credentials: { call: string; headers: Record<string, string> }[] = [
        { call: "GetPipeline, JWT", headers: { authorization: `Bearer ${token}` } },
        { call: "GetPipeline, API key", headers: { "x-api-key": secret } },
      ];
      const rows: ComparisonRow[] = [];
      for (const credential of credentials) {
        for (const concurrency of concurrencies) {
          const options: LoadOptions = { concurrency, warmupMs: ctx.timing.warmupMs, durationMs: ctx.timing.durationMs };
          const sides = {
            off: { baseUrl: open.url, name: pipelineName, headers: {} },
            on: { baseUrl: mesh.pipelines.url, name: pipelineName, headers: credential.headers },
          } satisfies Record<string, AuthedGetArgs>;
          const results: Partial<Record<keyof typeof sides, LoadResult>> = {};
          for (let round = 0; round < ctx.timing.rounds; round++) {
            const order = round % 2 === 0 ? (["off", "on"] as const) : (["on", "off"] as const);
            for (const side of order) {
              ctx.progress(`auth: ${credential.call}, auth ${side}, concurrency ${concurrency}, round ${round + 1}/${ctx.timing.rounds}`);
              const series = `auth/${credential.call}/${concurrency}/${side}`;
              results[side] = await ctx.load.run({ module: clientModule, factory: "authedGetPipelineCall", args: sides[side], options, series });
            }
            mesh.spans.reset();
          }
          rows.push({ call: credential.call, protocol: "gRPC, h2c", concurrency, subject: results.on!, baseline: results.off! });
        }
      }
      return formatComparison({
        title: "GetPipeline with identity enforced (JWT, API key) vs auth off, same process, same infrastructure",
        subjectName: "auth on",
        baselineName: "auth off",
        rows,
        notes: [
          `ratio = auth-on req/s / auth-off req/s (target >= 0.85x); per cell and side ${ctx.timing.rounds} x ${ctx.timing.durationMs / 1000}s, sides alternating`,
          "JWT: EdDSA signature checked against the cached JWKS once per token, then remembered until it expires; API key: SHA-256, then a 0.5 s in-process copy or a Redis read (Postgres at most every 4 s)",
        ],
      });
    } finally {
      await open.close();
      await mesh.close();
    }
  },
};

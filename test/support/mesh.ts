/**
 * Starts jobmesh services in the test process, against real Postgres, NATS and Redis, in an
 * isolated database and namespace.
 */
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace";
import { createInfra, type Infra } from "../../internal/mesh/infra.ts";
import { servePipelines } from "../../internal/mesh/servers.ts";
import type { RpcServer } from "../../internal/rpc/server.ts";
import { createLogger, startTelemetry, type Telemetry } from "../../internal/telemetry/index.ts";
import { isolate, type Isolated } from "./isolation.ts";

export interface TestMesh {
  isolated: Isolated;
  infra: Infra;
  pipelines: RpcServer;
  spans: InMemorySpanExporter;
  telemetry: Telemetry;
  close(): Promise<void>;
}

export async function startTestMesh(overrides: Record<string, string> = {}): Promise<TestMesh> {
  const isolated = await isolate(overrides);
  const spans = new InMemorySpanExporter();
  const telemetry = startTelemetry({ serviceName: "jobmesh-test", spanProcessors: [new SimpleSpanProcessor({ exporter: spans })] });
  const log = createLogger({ name: "test", level: isolated.config.logLevel });
  const infra = await createInfra(isolated.config, log, telemetry, "test");
  const pipelines = await servePipelines(infra, 0);
  return {
    isolated,
    infra,
    pipelines,
    spans,
    telemetry,
    async close() {
      await pipelines.close();
      await infra.cache.redis.eval("for _, k in ipairs(redis.call('keys', ARGV[1])) do redis.call('del', k) end", 0, `${isolated.namespace}:*`).catch(() => {});
      await infra.close();
      await telemetry.shutdown();
      await isolated.drop();
    },
  };
}

/**
 * How each service is served from the shared infrastructure. `cmd/<service>` serves one;
 * `jobmesh up` serves them all in one process.
 */
import { createPipelineDomain } from "../pipelines/pipelines.ts";
import { createPipelineService, PipelineService } from "../pipelines/service.ts";
import { createBootstrapTenantInterceptor } from "../rpc/bootstrap-tenant.ts";
import { bindService, startRpcServer, type RpcServer } from "../rpc/server.ts";
import type { Infra } from "./infra.ts";

export async function servePipelines(infra: Infra, port = infra.config.ports.pipelines): Promise<RpcServer> {
  const pipelines = createPipelineDomain({
    db: infra.db,
    cache: infra.cache,
    pageTokens: infra.pageTokens,
    validator: infra.validator,
    cacheTtlSeconds: infra.config.cacheTtlSeconds,
  });
  await pipelines.ensureBuiltIns(infra.bootstrapTenantId);
  return startRpcServer({
    name: "pipelines",
    host: infra.config.host,
    port,
    services: [bindService(PipelineService, createPipelineService(pipelines))],
    log: infra.log,
    telemetry: infra.telemetry,
    readiness: infra.readiness,
    identity: [createBootstrapTenantInterceptor(infra.bootstrapTenantId)],
    maxMessageBytes: infra.config.maxMessageBytes,
    shutdownGraceMs: infra.config.shutdownGraceMs,
  });
}

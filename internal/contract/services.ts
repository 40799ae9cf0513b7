/**
 * The registry: every service of the mesh, as generated, and every message type they use. The
 * Node services and the Deno gateway both read their contracts from here, so the role × RPC
 * matrix, the REST routes and the OpenAPI document come from one list.
 *
 * Transport-free on purpose: this module imports generated descriptors and @bufbuild/protobuf
 * only, so Deno loads it as it is. (`// @deno-types` points Deno at the .d.ts beside each
 * generated .js; Node's TypeScript finds it by itself.)
 */
import { createRegistry, type DescFile, type DescService, type Registry } from "@bufbuild/protobuf";
// @deno-types="../../gen/jobmesh/v1/audit_pb.d.ts"
import { AuditService } from "../../gen/jobmesh/v1/audit_pb.js";
// @deno-types="../../gen/jobmesh/v1/auth_pb.d.ts"
import { AuthService } from "../../gen/jobmesh/v1/auth_pb.js";
// @deno-types="../../gen/jobmesh/v1/jobs_pb.d.ts"
import { JobService } from "../../gen/jobmesh/v1/jobs_pb.js";
// @deno-types="../../gen/jobmesh/v1/pipelines_pb.d.ts"
import { PipelineService } from "../../gen/jobmesh/v1/pipelines_pb.js";
// @deno-types="../../gen/jobmesh/v1/webhooks_pb.d.ts"
import { WebhookService } from "../../gen/jobmesh/v1/webhooks_pb.js";
// @deno-types="../../gen/google/rpc/error_details_pb.d.ts"
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.js";

/** Every service of the mesh, in the order DESIGN.md's process table lists them. */
export const meshServices: readonly DescService[] = [JobService, PipelineService, AuthService, AuditService, WebhookService];

/** The short name a deployment gives each service's process ("jobs" → cmd/jobs, port 50051). */
export const serviceNames: Readonly<Record<string, "jobs" | "pipelines" | "auth" | "audit" | "webhooks">> = {
  [JobService.typeName]: "jobs",
  [PipelineService.typeName]: "pipelines",
  [AuthService.typeName]: "auth",
  [AuditService.typeName]: "audit",
  [WebhookService.typeName]: "webhooks",
};

/**
 * Every file the services' messages come from, with their imports (google.protobuf well-known
 * types, buf.validate, google.rpc details): what proto3 JSON needs to read and write Any and
 * error details by type name.
 */
export const meshRegistry: Registry = createRegistry(...filesWithImports([...meshServices.map((s) => s.file), file_google_rpc_error_details]));

/** The files and, transitively, every file they import, each once, imports before their importers. */
export function filesWithImports(roots: readonly DescFile[]): DescFile[] {
  const seen = new Map<string, DescFile>();
  const visit = (file: DescFile) => {
    if (seen.has(file.proto.name)) return;
    for (const dependency of file.dependencies) visit(dependency);
    seen.set(file.proto.name, file);
  };
  roots.forEach(visit);
  return [...seen.values()];
}

/**
 * PipelineService handlers: read the caller's tenant, call the domain, shape the response.
 * Request validation happened in the interceptor; domain errors are mapped there too.
 */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  CreatePipelineResponseSchema,
  DeletePipelineResponseSchema,
  GetPipelineResponseSchema,
  ListPipelineVersionsResponseSchema,
  ListPipelinesResponseSchema,
  type Pipeline,
  PipelineService,
  UpdatePipelineResponseSchema,
  ValidatePipelineResponseSchema,
} from "../../gen/jobmesh/v1/pipelines_pb.js";
import { InvalidArgumentError } from "../errors/index.ts";
import { callerOf } from "../rpc/context.ts";
import { type PipelineDomain, type PipelineFields, type UpdatableField, updatableFields } from "./pipelines.ts";

export { PipelineService };

const fieldsOf = (p: Pipeline): PipelineFields => ({
  displayName: p.displayName,
  description: p.description,
  labels: p.labels,
  config: p.config!,
});

function maskOf(paths: string[]): UpdatableField[] {
  for (const path of paths) {
    if (!(updatableFields as readonly string[]).includes(path)) {
      throw new InvalidArgumentError(`update_mask path "${path}" cannot be updated; use ${updatableFields.join(", ")}`, {
        violations: [{ field: "update_mask", description: `unknown or read-only path "${path}"` }],
      });
    }
  }
  return paths as UpdatableField[];
}

export function createPipelineService(pipelines: PipelineDomain): ServiceImpl<typeof PipelineService> {
  return {
    async createPipeline(req, ctx) {
      const { tenantId } = callerOf(ctx.values);
      const pipeline = await pipelines.create(tenantId, req.pipelineId, fieldsOf(req.pipeline!), req.requestId);
      return create(CreatePipelineResponseSchema, { pipeline });
    },
    async getPipeline(req, ctx) {
      const pipeline = await pipelines.get(callerOf(ctx.values).tenantId, req.name, req.version);
      return create(GetPipelineResponseSchema, { pipeline });
    },
    async listPipelines(req, ctx) {
      const page = await pipelines.list(callerOf(ctx.values).tenantId, req);
      return create(ListPipelinesResponseSchema, page);
    },
    async updatePipeline(req, ctx) {
      const p = req.pipeline!;
      if (!/^pipelines\/[a-z][a-z0-9-]*[a-z0-9]$/.test(p.name)) {
        throw new InvalidArgumentError(`pipeline.name "${p.name}" is not a pipeline name`, {
          violations: [{ field: "pipeline.name", description: 'must be "pipelines/{pipeline_id}"' }],
        });
      }
      const mask = maskOf(req.updateMask?.paths ?? []);
      const pipeline = await pipelines.update(callerOf(ctx.values).tenantId, p.name, p.etag, mask, fieldsOf(p));
      return create(UpdatePipelineResponseSchema, { pipeline });
    },
    async deletePipeline(req, ctx) {
      const pipeline = await pipelines.delete(callerOf(ctx.values).tenantId, req.name, req.etag);
      return create(DeletePipelineResponseSchema, { pipeline });
    },
    async listPipelineVersions(req, ctx) {
      const page = await pipelines.listVersions(callerOf(ctx.values).tenantId, req.parent, req.pageSize, req.pageToken);
      return create(ListPipelineVersionsResponseSchema, page);
    },
    async validatePipeline(req) {
      const violations = pipelines.validate(req.config);
      return create(ValidatePipelineResponseSchema, { valid: violations.length === 0, violations });
    },
  };
}

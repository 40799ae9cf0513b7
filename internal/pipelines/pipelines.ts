/**
 * The pipeline domain: versioned configurations per tenant. Transport-free; the service maps
 * requests onto these functions and their named errors onto status codes.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { Validator } from "@bufbuild/protovalidate";
import { type Pipeline, type PipelineConfig, PipelineSchema, type PipelineVersion, type PipelineViolation, PipelineViolationSchema } from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { Cache, Codec } from "../cache/index.ts";
import { inTransaction, type Pool } from "../db/index.ts";
import { InvalidArgumentError, type FieldViolation } from "../errors/index.ts";
import { pageSizeOf, parseFilter, parseOrderBy, splitPage, type KeysetPosition, type PageTokens } from "../paging/index.ts";
import { documentDefaultConfig, documentDefaultId } from "./document-default.ts";
import {
  BuiltInPipelineError,
  InvalidPipelineConfigError,
  PipelineDeletedError,
  PipelineExistsError,
  PipelineNotFoundError,
  RequestIdReusedError,
  StaleEtagError,
} from "./errors.ts";
import { allViolations } from "./rules.ts";
import * as store from "./store.ts";

export interface PipelineDomainDeps {
  db: Pool;
  cache: Cache;
  pageTokens: PageTokens;
  validator: Validator;
  cacheTtlSeconds: number;
}

export interface PipelineFields {
  displayName: string;
  description: string;
  labels: Record<string, string>;
  config: PipelineConfig;
}

/** Fields an update may name in its mask. */
export const updatableFields = ["display_name", "description", "labels", "config"] as const;
export type UpdatableField = (typeof updatableFields)[number];

const pipelineCodec: Codec<Pipeline> = {
  encode: (p) => toBinary(PipelineSchema, p),
  decode: (bytes) => fromBinary(PipelineSchema, bytes),
};

const idOf = (name: string) => name.replace(/^pipelines\//, "");

export function createPipelineDomain(deps: PipelineDomainDeps) {
  const { db, cache } = deps;
  const cacheKey = (tenantId: string, pipelineId: string, version: number | "latest") => `pipeline:${tenantId}:${pipelineId}:${version}`;

  function rejectInvalid(config: PipelineConfig | undefined, prefix: string) {
    const violations = config ? allViolations(deps.validator, config, prefix) : [];
    if (!config) violations.push({ field: prefix, rule: "required", message: "a configuration is required" } as PipelineViolation);
    if (violations.length > 0) {
      throw new InvalidPipelineConfigError(
        "invalid pipeline configuration: " + violations.map((v) => `${v.field}: ${v.message}`).join("; "),
        { violations: violations.map((v) => ({ field: v.field, description: `${v.message} [${v.rule}]` })) },
      );
    }
  }

  /** Postgres text and jsonb cannot hold U+0000: such input is the caller's error, not an INTERNAL one. */
  function rejectNul(fields: PipelineFields, paths: readonly UpdatableField[]) {
    const violations: FieldViolation[] = [];
    const check = (field: string, value: string) => {
      if (value.includes("\u0000")) violations.push({ field, description: "must not contain NUL characters" });
    };
    if (paths.includes("display_name")) check("pipeline.display_name", fields.displayName);
    if (paths.includes("description")) check("pipeline.description", fields.description);
    if (paths.includes("labels")) for (const [key, value] of Object.entries(fields.labels)) check(`pipeline.labels[${JSON.stringify(key)}]`, value);
    if (violations.length > 0) {
      throw new InvalidArgumentError("invalid pipeline: " + violations.map((v) => `${v.field}: ${v.description}`).join("; "), { violations });
    }
  }

  /** Drops every cached version of a pipeline; called after any change to it. */
  async function invalidate(tenantId: string, pipelineId: string, upToVersion: number) {
    const keys = [cacheKey(tenantId, pipelineId, "latest")];
    for (let v = 1; v <= upToVersion; v++) keys.push(cacheKey(tenantId, pipelineId, v));
    await cache.invalidate(...keys);
  }

  return {
    /** Every violation of a configuration, for ValidatePipeline's dry run. */
    validate(config: PipelineConfig | undefined): PipelineViolation[] {
      if (!config) return [create(PipelineViolationSchema, { field: "config", rule: "required", message: "a configuration is required" })];
      return allViolations(deps.validator, config, "config");
    },

    async create(tenantId: string, pipelineId: string, fields: PipelineFields, requestId: string): Promise<Pipeline> {
      if (requestId) {
        const earlier = await store.selectByRequestId(db, tenantId, requestId);
        if (earlier) {
          if (earlier.pipeline_id !== pipelineId) throw new RequestIdReusedError(requestId, store.nameOf(earlier.pipeline_id));
          return (await this.get(tenantId, store.nameOf(pipelineId), 1));
        }
      }
      rejectInvalid(fields.config, "pipeline.config");
      rejectNul(fields, updatableFields);
      const created = await inTransaction(db, (tx) =>
        store.insertPipeline(tx, tenantId, { pipelineId, ...fields, builtIn: false, requestId: requestId || null }),
      );
      if (!created) {
        // A concurrent create with the same request_id wins the race: answer as it would.
        if (requestId && (await store.selectByRequestId(db, tenantId, requestId))?.pipeline_id === pipelineId) {
          return this.get(tenantId, store.nameOf(pipelineId), 1);
        }
        throw new PipelineExistsError(store.nameOf(pipelineId));
      }
      return this.get(tenantId, store.nameOf(pipelineId), 0);
    },

    /** The pipeline at `version` (0 = latest), read through the Redis cache. */
    async get(tenantId: string, name: string, version: number): Promise<Pipeline> {
      const pipelineId = idOf(name);
      const pipeline = await cache.readThrough("pipelines", cacheKey(tenantId, pipelineId, version || "latest"), deps.cacheTtlSeconds, pipelineCodec, async () => {
        const row = await store.selectPipelineRow(db, tenantId, pipelineId, version);
        return row ? store.toPipeline(row) : undefined;
      });
      if (!pipeline) throw new PipelineNotFoundError(name, version || undefined);
      return pipeline;
    },

    async list(tenantId: string, req: { pageSize: number; pageToken: string; filter: string; orderBy: string; showDeleted: boolean }) {
      const terms = parseFilter(req.filter, ["name", "display_name", "state", "built_in", "labels."]);
      const orderBy = parseOrderBy(req.orderBy, ["create_time", "update_time", "name"], { field: "create_time", descending: true });
      const query = JSON.stringify([req.filter, req.orderBy, req.showDeleted]);
      const after = req.pageToken ? deps.pageTokens.decode<KeysetPosition>(req.pageToken, query) : undefined;
      const limit = pageSizeOf(req.pageSize);
      const rows = await store.selectPipelinePage(db, tenantId, { terms, showDeleted: req.showDeleted, orderBy, after, limit: limit + 1 });
      const { page, nextPageToken } = splitPage(rows, limit, (last) => store.positionOf(last, orderBy), deps.pageTokens, query);
      return { pipelines: page.map(store.toPipeline), nextPageToken };
    },

    /** Writes a new immutable version with the masked fields changed. */
    async update(tenantId: string, name: string, etag: string, mask: UpdatableField[], fields: PipelineFields): Promise<Pipeline> {
      const pipelineId = idOf(name);
      const paths = mask.length > 0 ? mask : [...updatableFields];
      const newVersion = await inTransaction(db, async (tx) => {
        const current = await store.selectPipelineRow(tx, tenantId, pipelineId, 0, true);
        if (!current) throw new PipelineNotFoundError(name);
        if (current.built_in) throw new BuiltInPipelineError(name);
        if (current.delete_time) throw new PipelineDeletedError(name);
        if (etag && etag !== store.etagOf(pipelineId, current.version, false)) throw new StaleEtagError(name);
        const was = store.toPipeline(current);
        const next = {
          displayName: paths.includes("display_name") ? fields.displayName : was.displayName,
          description: paths.includes("description") ? fields.description : was.description,
          labels: paths.includes("labels") ? fields.labels : was.labels,
          config: paths.includes("config") ? fields.config : was.config!,
        };
        if (paths.includes("config")) rejectInvalid(fields.config, "pipeline.config");
        rejectNul(fields, paths);
        const version = current.version + 1;
        await store.insertVersion(tx, tenantId, pipelineId, version, next);
        await store.setCurrentVersion(tx, tenantId, pipelineId, version, next);
        return version;
      });
      await invalidate(tenantId, pipelineId, newVersion);
      return this.get(tenantId, name, 0);
    },

    /** Soft delete: the rows stay, so jobs keep their snapshots; new jobs refuse it. */
    async delete(tenantId: string, name: string, etag: string): Promise<Pipeline> {
      const pipelineId = idOf(name);
      const version = await inTransaction(db, async (tx) => {
        const current = await store.selectPipelineRow(tx, tenantId, pipelineId, 0, true);
        if (!current) throw new PipelineNotFoundError(name);
        if (current.built_in) throw new BuiltInPipelineError(name);
        if (etag && etag !== store.etagOf(pipelineId, current.version, current.delete_time !== null)) throw new StaleEtagError(name);
        await store.markDeleted(tx, tenantId, pipelineId);
        return current.version;
      });
      await invalidate(tenantId, pipelineId, version);
      return this.get(tenantId, name, 0);
    },

    async listVersions(tenantId: string, parent: string, pageSize: number, pageToken: string): Promise<{ versions: PipelineVersion[]; nextPageToken: string }> {
      const pipelineId = idOf(parent);
      if (!(await store.pipelineExists(db, tenantId, pipelineId))) throw new PipelineNotFoundError(parent);
      const before = pageToken ? deps.pageTokens.decode<number>(pageToken, parent) : 2 ** 31 - 1; // above any version (int4)
      const limit = pageSizeOf(pageSize);
      const rows = await store.selectVersionPage(db, tenantId, pipelineId, before, limit + 1);
      const versions = rows.slice(0, limit);
      const nextPageToken = rows.length > limit ? deps.pageTokens.encode(versions[versions.length - 1].version, parent) : "";
      return { versions, nextPageToken };
    },

    /** Creates the built-in pipelines of a tenant when they are missing. Safe to repeat. */
    async ensureBuiltIns(tenantId: string): Promise<void> {
      await inTransaction(db, (tx) =>
        store.insertPipeline(tx, tenantId, {
          pipelineId: documentDefaultId,
          displayName: "Document (default)",
          description: "All five stages: ingest, detect, parse, enrich (with PII detection), output.",
          labels: {},
          config: documentDefaultConfig(),
          builtIn: true,
          requestId: null,
        }),
      );
    },
  };
}

export type PipelineDomain = ReturnType<typeof createPipelineDomain>;

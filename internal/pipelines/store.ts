/**
 * Pipeline rows in Postgres. Every query takes the tenant. A pipeline row holds what changes
 * (current version, deletion); pipeline_versions rows are immutable snapshots.
 */
import { create, fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createHash } from "node:crypto";
import {
  type Pipeline,
  type PipelineConfig,
  PipelineConfigSchema,
  PipelineSchema,
  PipelineState,
  type PipelineVersion,
  PipelineVersionSchema,
} from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { Queryable } from "../db/index.ts";
import { keysetSql, type FilterTerm, type KeysetPosition, type OrderBy } from "../paging/index.ts";

export interface PipelineRow {
  pipeline_id: string;
  version: number;
  display_name: string;
  description: string;
  labels: Record<string, string>;
  config: JsonValue;
  built_in: boolean;
  create_request_id: string | null;
  create_time: Date;
  update_time: Date;
  version_time: Date;
  delete_time: Date | null;
}

export const nameOf = (pipelineId: string) => `pipelines/${pipelineId}`;

/** Opaque, changes with every version and on deletion. */
export function etagOf(pipelineId: string, version: number, deleted: boolean): string {
  return createHash("sha256").update(`${pipelineId}\0${version}\0${deleted ? "d" : ""}`).digest("base64url").slice(0, 16);
}

export function toPipeline(row: PipelineRow): Pipeline {
  const deleted = row.delete_time !== null;
  return create(PipelineSchema, {
    name: nameOf(row.pipeline_id),
    displayName: row.display_name,
    description: row.description,
    labels: row.labels,
    config: fromJson(PipelineConfigSchema, row.config),
    version: row.version,
    state: deleted ? PipelineState.DELETED : PipelineState.ACTIVE,
    etag: etagOf(row.pipeline_id, row.version, deleted),
    builtIn: row.built_in,
    createTime: timestampFromDate(row.create_time),
    updateTime: timestampFromDate(row.version_time),
    deleteTime: row.delete_time ? timestampFromDate(row.delete_time) : undefined,
  });
}

const selectPipeline = `
  SELECT p.pipeline_id, v.version, v.display_name, v.description, v.labels, v.config, p.built_in,
         p.create_request_id, p.create_time, p.update_time, v.create_time AS version_time, p.delete_time
  FROM pipelines p
  JOIN pipeline_versions v ON v.tenant_id = p.tenant_id AND v.pipeline_id = p.pipeline_id`;

/** The pipeline at `version`, or at its current version when `version` is 0. */
export async function selectPipelineRow(db: Queryable, tenantId: string, pipelineId: string, version: number, forUpdate = false): Promise<PipelineRow | undefined> {
  const { rows } = await db.query<PipelineRow>(
    `${selectPipeline}
     WHERE p.tenant_id = $1 AND p.pipeline_id = $2
       AND v.version = CASE WHEN $3::int = 0 THEN p.current_version ELSE $3::int END
     ${forUpdate ? "FOR UPDATE OF p" : ""}`,
    [tenantId, pipelineId, version],
  );
  return rows[0];
}

export async function selectByRequestId(db: Queryable, tenantId: string, requestId: string): Promise<PipelineRow | undefined> {
  const { rows } = await db.query<PipelineRow>(
    `${selectPipeline} WHERE p.tenant_id = $1 AND p.create_request_id = $2 AND v.version = 1`,
    [tenantId, requestId],
  );
  return rows[0];
}

export interface NewPipeline {
  pipelineId: string;
  displayName: string;
  description: string;
  labels: Record<string, string>;
  config: PipelineConfig;
  builtIn: boolean;
  requestId: string | null;
}

/** Inserts a pipeline at version 1; false when the id (or request id) is taken. */
export async function insertPipeline(db: Queryable, tenantId: string, p: NewPipeline): Promise<boolean> {
  const inserted = await db.query(
    `INSERT INTO pipelines (tenant_id, pipeline_id, current_version, built_in, create_request_id, display_name, description, labels)
     VALUES ($1, $2, 1, $3, $4, $5, $6, $7)
     ON CONFLICT DO NOTHING`,
    [tenantId, p.pipelineId, p.builtIn, p.requestId, p.displayName, p.description, p.labels],
  );
  if (inserted.rowCount === 0) return false;
  await insertVersion(db, tenantId, p.pipelineId, 1, p);
  return true;
}

export async function insertVersion(db: Queryable, tenantId: string, pipelineId: string, version: number, p: Omit<NewPipeline, "pipelineId" | "builtIn" | "requestId">) {
  await db.query(
    `INSERT INTO pipeline_versions (tenant_id, pipeline_id, version, display_name, description, labels, config)
     VALUES ($1, $2, $3, $4, $5, $6, $7)`,
    [tenantId, pipelineId, version, p.displayName, p.description, p.labels, toJson(PipelineConfigSchema, p.config)],
  );
}

export async function setCurrentVersion(db: Queryable, tenantId: string, pipelineId: string, version: number, p: Omit<NewPipeline, "pipelineId" | "builtIn" | "requestId" | "config">) {
  await db.query(
    `UPDATE pipelines SET current_version = $3, display_name = $4, description = $5, labels = $6,
            update_time = date_trunc('milliseconds', now())
     WHERE tenant_id = $1 AND pipeline_id = $2`,
    [tenantId, pipelineId, version, p.displayName, p.description, p.labels],
  );
}

export async function markDeleted(db: Queryable, tenantId: string, pipelineId: string) {
  await db.query(
    `UPDATE pipelines SET delete_time = date_trunc('milliseconds', now()), update_time = date_trunc('milliseconds', now())
     WHERE tenant_id = $1 AND pipeline_id = $2 AND delete_time IS NULL`,
    [tenantId, pipelineId],
  );
}


const sortColumns: Record<string, string> = { create_time: "p.create_time", update_time: "p.update_time", name: "p.pipeline_id" };

export async function selectPipelinePage(
  db: Queryable,
  tenantId: string,
  query: { terms: FilterTerm[]; showDeleted: boolean; orderBy: OrderBy; after?: KeysetPosition; limit: number },
): Promise<PipelineRow[]> {
  const params: unknown[] = [tenantId];
  const where = ["p.tenant_id = $1", "v.version = p.current_version"];
  const param = (value: unknown) => `$${params.push(value)}`;
  let stateFiltered = false;
  for (const term of query.terms) {
    const column =
      term.field === "name" ? "p.pipeline_id"
      : term.field === "display_name" ? "v.display_name"
      : term.field.startsWith("labels.") ? `(v.labels ->> ${param(term.field.slice("labels.".length))})`
      : undefined;
    if (term.field === "state") {
      stateFiltered = true;
      const deleted = term.value.toUpperCase() === "DELETED";
      where.push(`p.delete_time IS ${(term.op === "!=") !== deleted ? "NOT NULL" : "NULL"}`);
    } else if (term.field === "built_in") {
      where.push(`p.built_in ${term.op === "!=" ? "<>" : "="} ${param(term.value === "true")}`);
    } else if (column) {
      const value = term.field === "name" ? term.value.replace(/^pipelines\//, "") : term.value;
      if (term.op === "=") where.push(`${column} = ${param(value)}`);
      else if (term.op === "!=") where.push(`${column} IS DISTINCT FROM ${param(value)}`);
      else if (value.endsWith("*")) where.push(`starts_with(${column}, ${param(value.slice(0, -1))})`);
      else where.push(`strpos(${column}, ${param(value)}) > 0`);
    }
  }
  if (!stateFiltered && !query.showDeleted) where.push("p.delete_time IS NULL");
  const keyset = keysetSql({
    sort: sortColumns[query.orderBy.field],
    sortType: query.orderBy.field === "name" ? "text" : "timestamptz",
    id: "p.pipeline_id",
    descending: query.orderBy.descending,
    after: query.after,
    param,
  });
  if (keyset.resume) where.push(keyset.resume);
  const { rows } = await db.query<PipelineRow>(
    `${selectPipeline} WHERE ${where.join(" AND ")} ${keyset.orderBy} LIMIT ${param(query.limit)}`,
    params,
  );
  return rows;
}

/** The position of a row for the next page's token. */
export function positionOf(row: PipelineRow, orderBy: OrderBy): KeysetPosition {
  const value = orderBy.field === "name" ? row.pipeline_id : (orderBy.field === "update_time" ? row.update_time : row.create_time).toISOString();
  return [value, row.pipeline_id];
}

export async function selectVersionPage(db: Queryable, tenantId: string, pipelineId: string, beforeVersion: number, limit: number): Promise<PipelineVersion[]> {
  const { rows } = await db.query<{ version: number; config: JsonValue; create_time: Date; delete_time: Date | null; current_version: number }>(
    `SELECT v.version, v.config, v.create_time, p.delete_time, p.current_version
     FROM pipeline_versions v JOIN pipelines p USING (tenant_id, pipeline_id)
     WHERE v.tenant_id = $1 AND v.pipeline_id = $2 AND v.version < $3
     ORDER BY v.version DESC LIMIT $4`,
    [tenantId, pipelineId, beforeVersion, limit],
  );
  return rows.map((r) =>
    create(PipelineVersionSchema, {
      pipeline: nameOf(pipelineId),
      version: r.version,
      config: fromJson(PipelineConfigSchema, r.config),
      etag: etagOf(pipelineId, r.version, r.delete_time !== null && r.version === r.current_version),
      createTime: timestampFromDate(r.create_time),
    }),
  );
}

export async function pipelineExists(db: Queryable, tenantId: string, pipelineId: string): Promise<boolean> {
  const { rowCount } = await db.query("SELECT 1 FROM pipelines WHERE tenant_id = $1 AND pipeline_id = $2", [tenantId, pipelineId]);
  return (rowCount ?? 0) > 0;
}

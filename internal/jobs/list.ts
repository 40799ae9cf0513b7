/**
 * ListJobs: AIP-160-style filters (state, pipeline, priority, stage, labels, create_time and
 * end_time comparisons), order_by and keyset pagination with signed page tokens.
 */
import { JobState } from "../../gen/jobmesh/v1/events_pb.js";
import { Priority } from "../../gen/jobmesh/v1/jobs_pb.js";
import { Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { Queryable } from "../db/index.ts";
import { InvalidArgumentError } from "../errors/index.ts";
import { keysetSql, pageSizeOf, parseFilter, parseOrderBy, splitPage, type KeysetPosition, type PageTokens } from "../paging/index.ts";
import { jobColumnList, type JobRow } from "./store.ts";

export interface ListJobsQuery {
  pageSize: number;
  pageToken: string;
  filter: string;
  orderBy: string;
}

const timeTerm = /^\s*(create_time|end_time)\s*(<=|>=|<|>)\s*"([^"]+)"\s*$/;
const sortColumns: Record<string, string> = {
  create_time: "create_time",
  update_time: "update_time",
  end_time: "coalesce(end_time, 'infinity'::timestamptz)",
  priority: "priority",
};

function invalid(field: string, why: string) {
  return new InvalidArgumentError(`${field} is invalid: ${why}`, { violations: [{ field, description: why }] });
}

function enumValue(e: Record<string, string | number>, prefix: string, raw: string): number {
  const value = e[raw.toUpperCase().replace(new RegExp(`^${prefix}`), "")];
  if (typeof value !== "number" || value === 0) throw invalid("filter", `unknown ${prefix.toLowerCase().replace(/_$/, "")} "${raw}"`);
  return value;
}

export async function listJobs(db: Queryable, pageTokens: PageTokens, tenantId: string, q: ListJobsQuery): Promise<{ rows: JobRow[]; nextPageToken: string }> {
  const params: unknown[] = [tenantId];
  const param = (value: unknown) => `$${params.push(value)}`;
  const where = ["tenant_id = $1"];
  const parts = q.filter.trim() === "" ? [] : q.filter.split(/\s+AND\s+/);
  const plain: string[] = [];
  for (const part of parts) {
    const m = timeTerm.exec(part);
    if (!m) {
      plain.push(part);
      continue;
    }
    const time = new Date(m[3]);
    if (Number.isNaN(time.getTime())) throw invalid("filter", `"${m[3]}" is not an RFC 3339 timestamp`);
    where.push(`${m[1]} ${m[2]} ${param(time)}`);
  }
  for (const term of parseFilter(plain.join(" AND "), ["state", "pipeline", "priority", "stage", "labels."])) {
    if (term.op === ":") throw invalid("filter", `use = or != with ${term.field}`);
    const op = term.op === "=" ? "=" : "IS DISTINCT FROM";
    if (term.field === "state") where.push(`state ${op} ${param(enumValue(JobState as never, "JOB_STATE_", term.value))}`);
    else if (term.field === "priority") where.push(`priority ${op} ${param(enumValue(Priority as never, "PRIORITY_", term.value))}`);
    else if (term.field === "pipeline") where.push(`pipeline_id ${op} ${param(term.value.replace(/^pipelines\//, ""))}`);
    else if (term.field === "stage") {
      const stage = enumValue(Stage as never, "STAGE_", term.value);
      // The snapshot is protobuf JSON, where enum values are their full names.
      where.push(`(pipeline_config -> 'stages' -> stage_index ->> 'stage') ${op} ${param(`STAGE_${Stage[stage]}`)}`);
    } else where.push(`(labels ->> ${param(term.field.slice("labels.".length))}) ${op} ${param(term.value)}`);
  }
  const orderBy = parseOrderBy(q.orderBy, Object.keys(sortColumns), { field: "create_time", descending: true });
  const sort = sortColumns[orderBy.field];
  const queryKey = JSON.stringify([q.filter, q.orderBy]);
  const after = q.pageToken ? pageTokens.decode<KeysetPosition>(q.pageToken, queryKey) : undefined;
  const sortType = orderBy.field === "priority" ? "smallint" : "timestamptz";
  const keyset = keysetSql({ sort, sortType, id: "id", idType: "uuid", descending: orderBy.descending, after, param });
  if (keyset.resume) where.push(keyset.resume);
  const limit = pageSizeOf(q.pageSize);
  // The sort value travels as text: exact to the microsecond, and 'infinity' survives.
  const { rows } = await db.query<JobRow & { sort_value: string }>(
    `SELECT ${jobColumnList}, (${sort})::text AS sort_value FROM jobs WHERE ${where.join(" AND ")}
     ${keyset.orderBy} LIMIT ${param(limit + 1)}`,
    params,
  );
  const { page, nextPageToken } = splitPage(rows, limit, (last) => [last.sort_value, last.id], pageTokens, queryKey);
  return { rows: page, nextPageToken };
}

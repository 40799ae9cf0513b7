/**
 * The ListAuditEvents filter: terms joined by AND, each `field op value`, turned into
 * parameterised SQL over audit_events (never a value spliced into the text). Fields:
 * actor, action, resource, resource_type, request_id, trace_id, client_address, recorder and
 * credential_hint (=, !=, and `:` — a prefix match when the value ends in `*`, else a substring);
 * actor_kind (= or != USER, API_KEY, SYSTEM, UNSPECIFIED); code (a number or a canonical name
 * such as NOT_FOUND, compared with = != < <= > >=); sequence (a number) and event_time (RFC 3339)
 * compared with = != < <= > >=. A term that cannot be read is an InvalidAuditFilterError naming it.
 */
import { PrincipalKind } from "../../gen/jobmesh/v1/auth_pb.js";
import { InvalidAuditFilterError } from "./errors.ts";

const textFields: Record<string, string> = {
  actor: "actor_subject",
  action: "action",
  resource: "resource",
  resource_type: "resource_type",
  request_id: "request_id",
  trace_id: "trace_id",
  client_address: "client_address",
  recorder: "recorder",
  credential_hint: "credential_hint",
};

const codes = [
  "OK", "CANCELED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
];

const term = /\s*([a-z_]+)\s*(<=|>=|!=|=|<|>|:)\s*("(?:[^"\\]|\\.)*"|[^\s"]+)\s*/iy;
const and = /AND(?=\s|$)\s*/y;
const rfc3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$/;
const comparisons = new Set(["=", "!=", "<", "<=", ">", ">="]);

/** Adds a query parameter and returns its placeholder ($n). */
export type Param = (value: unknown) => string;

const likeEscaped = (s: string) => s.replace(/[\\%_]/g, (c) => `\\${c}`);

function valueOf(raw: string, text: string): string {
  if (!raw.startsWith('"')) return raw;
  try {
    return JSON.parse(raw) as string;
  } catch {
    throw new InvalidAuditFilterError(text, `cannot read the quoted value ${raw}`);
  }
}

function sqlOp(op: string): string {
  return op === "!=" ? "IS DISTINCT FROM" : op;
}

function conditionOf(field: string, op: string, value: string, text: string, param: Param): string {
  const column = textFields[field];
  if (column) {
    if (op === "=" || op === "!=") return `${column} ${sqlOp(op)} ${param(value)}`;
    if (op === ":") {
      const pattern = value.endsWith("*") ? `${likeEscaped(value.slice(0, -1))}%` : `%${likeEscaped(value)}%`;
      return `${column} LIKE ${param(pattern)}`;
    }
    throw new InvalidAuditFilterError(text, `${field} takes =, != or :`);
  }
  if (field === "actor_kind") {
    const kind = (PrincipalKind as unknown as Record<string, number | string>)[value.toUpperCase().replace(/^PRINCIPAL_KIND_/, "")];
    if (typeof kind !== "number") throw new InvalidAuditFilterError(text, "actor_kind is one of USER, API_KEY, SYSTEM, UNSPECIFIED");
    if (op !== "=" && op !== "!=") throw new InvalidAuditFilterError(text, "actor_kind takes = or !=");
    return `actor_kind ${sqlOp(op)} ${param(kind)}`;
  }
  if (!comparisons.has(op)) throw new InvalidAuditFilterError(text, `${field} takes =, !=, <, <=, > or >=`);
  if (field === "code") {
    const named = codes.indexOf(value.toUpperCase());
    const code = named >= 0 ? named : /^\d{1,9}$/.test(value) ? Number(value) : NaN;
    if (Number.isNaN(code)) throw new InvalidAuditFilterError(text, "code is a number or a canonical name such as NOT_FOUND");
    return `code ${sqlOp(op)} ${param(code)}`;
  }
  if (field === "sequence") {
    if (!/^\d{1,18}$/.test(value)) throw new InvalidAuditFilterError(text, "sequence is a whole number");
    return `sequence ${sqlOp(op)} ${param(value)}::bigint`;
  }
  if (field === "event_time") {
    if (!rfc3339.test(value) || Number.isNaN(Date.parse(value))) throw new InvalidAuditFilterError(text, "event_time is an RFC 3339 time such as 2025-01-01T00:00:00Z");
    return `event_time ${sqlOp(op)} ${param(value)}::timestamptz`;
  }
  throw new InvalidAuditFilterError(text, `unknown field; filterable fields are ${[...Object.keys(textFields), "actor_kind", "code", "sequence", "event_time"].join(", ")}`);
}

/** The SQL conditions of a filter (to AND with the tenant's), or none for an empty filter. */
export function auditFilterConditions(filter: string, param: Param): string[] {
  const conditions: string[] = [];
  let at = 0;
  while (at < filter.length) {
    if (conditions.length > 0) {
      and.lastIndex = at;
      const joined = and.exec(filter);
      if (!joined) throw new InvalidAuditFilterError(filter.slice(at).trim(), "terms are joined by AND (OR and NOT are not supported)");
      at = and.lastIndex;
      if (at >= filter.length) throw new InvalidAuditFilterError("AND", "a term must follow AND");
    }
    if (conditions.length === 0 && filter.slice(at).trim() === "") break;
    term.lastIndex = at;
    const match = term.exec(filter);
    if (!match) {
      const rest = filter.slice(at).trim();
      throw new InvalidAuditFilterError(rest.split(/\s+AND\s+/)[0] || rest, 'cannot read it; expected field op value, such as action = "jobmesh.v1.JobService.CreateJob"');
    }
    at = term.lastIndex;
    const text = match[0].trim();
    const value = valueOf(match[3], text);
    if (value.includes("\u0000")) throw new InvalidAuditFilterError(text, "the value contains a NUL character");
    conditions.push(conditionOf(match[1].toLowerCase(), match[2], value, text, param));
  }
  return conditions;
}

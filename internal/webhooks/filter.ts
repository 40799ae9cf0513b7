/**
 * The filter grammars of ListWebhooks and ListWebhookDeliveries (AIP-160 subsets, terms joined by
 * AND), turned into SQL conditions with parameters. Every value travels as a parameter; field
 * names come from fixed tables, never from the request.
 */
import { JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
import { WebhookDeliveryStatus, WebhookState } from "../../gen/jobmesh/v1/webhooks_pb.js";
import { parseFilter } from "../paging/index.ts";
import { InvalidWebhookArgumentError } from "./errors.ts";

/** Adds a query parameter and returns its placeholder ($n). */
export type Param = (value: unknown) => string;

const invalid = (why: string) => new InvalidWebhookArgumentError("filter", why);

/** The number of `raw` in a generated enum: "ACTIVE" or "WEBHOOK_STATE_ACTIVE"; never 0. */
function enumValue(e: Record<string, string | number>, prefix: string, what: string, raw: string): number {
  const value = e[raw.toUpperCase().replace(new RegExp(`^${prefix}`), "")];
  if (typeof value !== "number" || value === 0) throw invalid(`unknown ${what} "${raw}"`);
  return value;
}

/** A JobEventType by name: "JOB_FAILED" or "JOB_EVENT_TYPE_JOB_FAILED". */
export function eventTypeOf(raw: string): number {
  return enumValue(JobEventType as never, "JOB_EVENT_TYPE_", "event type", raw);
}

/**
 * ListWebhooks: `state = ACTIVE|DISABLED`, `event_types:JOB_FAILED` (subscriptions that receive
 * that type, including those that receive every type), `labels.key = "v"`; = and != where they
 * make sense.
 */
export function webhookFilterSql(filter: string, param: Param): string[] {
  const where: string[] = [];
  for (const term of parseFilter(filter, ["state", "event_types", "labels."])) {
    if (term.field === "event_types") {
      if (term.op !== ":") throw invalid('use event_types:TYPE ("has")');
      where.push(`(event_types = '{}' OR ${param(eventTypeOf(term.value))}::int = ANY (event_types))`);
      continue;
    }
    if (term.op === ":") throw invalid(`use = or != with ${term.field}`);
    const op = term.op === "=" ? "=" : "IS DISTINCT FROM";
    if (term.field === "state") where.push(`state ${op} ${param(enumValue(WebhookState as never, "WEBHOOK_STATE_", "state", term.value))}`);
    else where.push(`(labels ->> ${param(term.field.slice("labels.".length))}) ${op} ${param(term.value)}`);
  }
  return where;
}

const timeTerm = /^\s*create_time\s*(<=|>=|<|>)\s*"?([^"\s]+)"?\s*$/;

/**
 * ListWebhookDeliveries: `status = PENDING|SUCCEEDED|FAILED`, `event_type = JOB_FAILED`,
 * `job = "jobs/x"`, `event_id = "..."`, and `create_time` compared with <, <=, >, >= to an RFC
 * 3339 timestamp.
 */
export function deliveryFilterSql(filter: string, param: Param): string[] {
  const where: string[] = [];
  const plain: string[] = [];
  for (const part of filter.trim() === "" ? [] : filter.split(/\s+AND\s+/)) {
    const m = timeTerm.exec(part);
    if (!m) {
      plain.push(part);
      continue;
    }
    const time = new Date(m[2]);
    if (Number.isNaN(time.getTime()) || !/^\d{4}-\d\d-\d\dT/.test(m[2])) throw invalid(`"${m[2]}" is not an RFC 3339 timestamp`);
    where.push(`create_time ${m[1]} ${param(time)}`);
  }
  for (const term of parseFilter(plain.join(" AND "), ["status", "event_type", "job", "event_id"])) {
    if (term.op === ":") throw invalid(`use = or != with ${term.field}`);
    const op = term.op === "=" ? "=" : "IS DISTINCT FROM";
    if (term.field === "status") where.push(`status ${op} ${param(enumValue(WebhookDeliveryStatus as never, "WEBHOOK_DELIVERY_STATUS_", "status", term.value))}`);
    else if (term.field === "event_type") where.push(`event_type ${op} ${param(eventTypeOf(term.value))}`);
    else where.push(`${term.field} ${op} ${param(term.value)}`);
  }
  return where;
}

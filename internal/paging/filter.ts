/**
 * A small subset of AIP-160 filters: terms joined by AND, each `field op value` with op one of
 * `=`, `!=`, `:` (has: prefix match when the value ends in `*`, else substring), and values
 * bare words or double-quoted strings. Each list decides which fields it accepts.
 */
import { InvalidArgumentError } from "../errors/index.ts";

export interface FilterTerm {
  field: string;
  op: "=" | "!=" | ":";
  value: string;
}

const termPattern = /^\s*([a-z_][a-z0-9_]*(?:\.[a-z0-9_.-]+)?)\s*(!=|=|:)\s*("(?:[^"\\]|\\.)*"|[^\s"]+)\s*$/i;

function invalid(filter: string, why: string) {
  return new InvalidArgumentError(`filter "${filter}" is invalid: ${why}`, { violations: [{ field: "filter", description: why }] });
}

/** Parses a filter, accepting only the given fields (a field ending in "." accepts any suffix). */
export function parseFilter(filter: string, fields: string[]): FilterTerm[] {
  if (filter.trim() === "") return [];
  return filter.split(/\s+AND\s+/).map((part) => {
    const match = termPattern.exec(part);
    if (!match) throw invalid(filter, `cannot read "${part.trim()}"; expected field = "value" joined by AND`);
    const [, field, op, raw] = match;
    const known = fields.some((f) => (f.endsWith(".") ? field.startsWith(f) && field.length > f.length : f === field));
    if (!known) throw invalid(filter, `unknown field "${field}"; filterable fields are ${fields.join(", ")}`);
    let value = raw;
    if (raw.startsWith('"')) {
      try {
        value = JSON.parse(raw) as string;
      } catch {
        throw invalid(filter, `cannot read the quoted value ${raw}`);
      }
    }
    // Postgres text cannot hold U+0000: refuse it here rather than fail inside the query.
    if (value.includes("\u0000")) throw invalid(filter, `the value of "${field}" contains a NUL character`);
    return { field, op: op as FilterTerm["op"], value };
  });
}

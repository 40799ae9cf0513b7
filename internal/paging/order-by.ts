import { InvalidArgumentError } from "../errors/index.ts";

export interface OrderBy {
  field: string;
  descending: boolean;
}

/** Parses `order_by` ("create_time desc"); one field, from the allowed ones. */
export function parseOrderBy(orderBy: string, fields: string[], fallback: OrderBy): OrderBy {
  const text = orderBy.trim();
  if (text === "") return fallback;
  const match = /^([a-z_]+)(?:\s+(asc|desc))?$/i.exec(text);
  if (!match || !fields.includes(match[1])) {
    throw new InvalidArgumentError(`order_by "${orderBy}" is invalid: use one of ${fields.join(", ")}, optionally followed by " desc"`, {
      violations: [{ field: "order_by", description: `must be one of ${fields.join(", ")} [asc|desc]` }],
    });
  }
  return { field: match[1], descending: match[2]?.toLowerCase() === "desc" };
}

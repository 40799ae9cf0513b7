/**
 * List pagination after AIP-158: opaque page tokens that carry the position of the last row
 * (keyset pagination) and are signed, so a tampered token or one reused with a different
 * filter or order is INVALID_ARGUMENT instead of a wrong page.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { InvalidArgumentError } from "../errors/index.ts";

export { parseFilter, type FilterTerm } from "./filter.ts";
export { parseOrderBy, type OrderBy } from "./order-by.ts";

export const defaultPageSize = 50;
export const maxPageSize = 1000;

/** The page size to use: the default for 0, never above the maximum. */
export function pageSizeOf(requested: number): number {
  if (requested <= 0) return defaultPageSize;
  return Math.min(requested, maxPageSize);
}

export interface PageTokens {
  /** A token resuming after `position`, valid only for the same `query` (filter, order...). */
  encode(position: unknown, query: string): string;
  /** The position inside a token; throws InvalidArgumentError if it was altered or is foreign. */
  decode<T>(token: string, query: string): T;
}

export function createPageTokens(secret: string): PageTokens {
  const sign = (body: string) => createHmac("sha256", secret).update(body).digest().subarray(0, 16);
  const scope = (query: string) => createHash("sha256").update(query).digest("base64url").slice(0, 12);
  const invalid = () => new InvalidArgumentError("page_token is invalid: pass next_page_token unchanged, with the same filter and order_by", {
    violations: [{ field: "page_token", description: "not a token issued for this query" }],
  });
  return {
    encode(position, query) {
      const body = Buffer.from(JSON.stringify({ p: position, q: scope(query) })).toString("base64url");
      return `${body}.${sign(body).toString("base64url")}`;
    },
    decode(token, query) {
      const [body, mac] = token.split(".");
      if (!body || !mac) throw invalid();
      const expected = sign(body);
      const given = Buffer.from(mac, "base64url");
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw invalid();
      const decoded = JSON.parse(Buffer.from(body, "base64url").toString()) as { p: unknown; q: string };
      if (decoded.q !== scope(query)) throw invalid();
      return decoded.p as never;
    },
  };
}
export { keysetSql, splitPage, type KeysetPosition } from "./keyset.ts";

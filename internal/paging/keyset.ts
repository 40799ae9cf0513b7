import type { PageTokens } from "./index.ts";

/** Where a keyset page resumes: the last row's sort value (as text) and its id. */
export type KeysetPosition = [sortValue: string, id: string];

export interface KeysetQuery {
  /** Sort column expression, e.g. "create_time". */
  sort: string;
  /** SQL type the sort value is cast back to from text, e.g. "timestamptz". */
  sortType: string;
  /** Unique column that breaks ties, e.g. "user_id". */
  id: string;
  /** SQL type of the id when it is not text, e.g. "uuid". */
  idType?: string;
  descending: boolean;
  after?: KeysetPosition;
  /** Adds a query parameter and returns its placeholder ($n). */
  param: (value: unknown) => string;
}

/**
 * The SQL of one keyset page over (sort, id): the condition that resumes after a position, and
 * the ORDER BY. Select the sort value as `(sort)::text`: exact to the microsecond, cast back here.
 */
export function keysetSql(q: KeysetQuery): { resume?: string; orderBy: string } {
  const dir = q.descending ? "DESC" : "ASC";
  const resume = q.after
    ? `(${q.sort}, ${q.id}) ${q.descending ? "<" : ">"} (${q.param(q.after[0])}::${q.sortType}, ${q.param(q.after[1])}${q.idType ? `::${q.idType}` : ""})`
    : undefined;
  return { resume, orderBy: `ORDER BY ${q.sort} ${dir}, ${q.id} ${dir}` };
}

/** Splits rows fetched with LIMIT pageSize + 1 into the page and the token of the next page. */
export function splitPage<R>(rows: R[], pageSize: number, positionOf: (last: R) => KeysetPosition, tokens: PageTokens, query: string) {
  const page = rows.slice(0, pageSize);
  const nextPageToken = rows.length > pageSize ? tokens.encode(positionOf(page[page.length - 1]), query) : "";
  return { page, nextPageToken };
}

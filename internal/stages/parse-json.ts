/** JSON → pretty-printed text; top-level keys as headings; an array of flat records as a table. */
import { PermanentStageError } from "./errors.ts";
import type { ParsedDocument, Table } from "./parsed-document.ts";

/** Parses JSON; invalid JSON is a corrupt document. */
export function parseJson(source: string): ParsedDocument {
  let value: unknown;
  try {
    value = JSON.parse(source);
  } catch (cause) {
    throw new PermanentStageError("corrupt_document", "the JSON document could not be parsed", { cause });
  }
  const text = JSON.stringify(value, null, 2) ?? "";
  const isObject = value !== null && typeof value === "object" && !Array.isArray(value);
  const headings = isObject ? Object.keys(value as object).map((key) => ({ level: 1, text: key })) : [];
  const table = Array.isArray(value) ? recordsTable(value) : undefined;
  return { text, headings, tables: table ? [table] : [], links: [] };
}

/**
 * A header row of every key seen (in first-seen order) and a row per record. Records that share
 * few keys are not a table: with a column per key ever seen, n records of one distinct key each
 * would make n² cells from a text of size n. A table must fill at least half its cells.
 */
function recordsTable(items: unknown[]): Table | undefined {
  if (items.length === 0) return undefined;
  const records: Record<string, unknown>[] = [];
  let values = 0;
  for (const item of items) {
    if (item === null || typeof item !== "object" || Array.isArray(item)) return undefined;
    const rec = item as Record<string, unknown>;
    const recValues = Object.values(rec);
    if (recValues.some((v) => v !== null && typeof v === "object")) return undefined;
    values += recValues.length;
    records.push(rec);
  }
  const columns = [...new Set(records.flatMap((r) => Object.keys(r)))];
  if (records.length * columns.length > 2 * values) return undefined;
  const cell = (v: unknown): string => (v === undefined || v === null ? "" : String(v));
  return { rows: [columns, ...records.map((r) => columns.map((c) => cell(r[c])))] };
}

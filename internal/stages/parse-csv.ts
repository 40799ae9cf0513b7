/** CSV/TSV → one table (csv-parse), with the delimiter sniffed from the first lines. */
import { parse } from "csv-parse/sync";
import { PermanentStageError } from "./errors.ts";
import type { ParsedDocument } from "./parsed-document.ts";

const CANDIDATES = [",", ";", "\t", "|"];

/** Rows of a delimited text as a single table; the text is the rows, cells tab-separated. */
export function parseCsv(source: string, tabSeparated = false): ParsedDocument {
  const delimiter = tabSeparated ? "\t" : sniffDelimiter(source);
  let rows: string[][];
  try {
    rows = parse(source, {
      delimiter,
      bom: true,
      relax_column_count: true,
      relax_quotes: true,
      skip_empty_lines: true,
    }) as string[][];
  } catch (cause) {
    throw new PermanentStageError("corrupt_document", "the CSV document could not be parsed", { cause });
  }
  const text = rows.map((r) => r.map((c) => c.trim()).join("\t")).join("\n");
  return { text, headings: [], tables: rows.length ? [{ rows }] : [], links: [] };
}

/** The candidate that splits the first lines most often and most consistently. */
function sniffDelimiter(source: string): string {
  const lines = source.split(/\r?\n/, 21).filter((l) => l.trim() !== "").slice(0, 20);
  let best = ",";
  let bestScore = 0;
  for (const d of CANDIDATES) {
    const counts = lines.map((l) => l.split(d).length - 1);
    const min = Math.min(...counts);
    const consistent = counts.every((c) => c === counts[0]);
    const score = (consistent ? 2 : 1) * min;
    if (score > bestScore) {
      best = d;
      bestScore = score;
    }
  }
  return best;
}

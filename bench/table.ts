/**
 * Plain-text tables for the bench: aligned columns, numbers right-aligned, and the comparison
 * layout every entry shares (subject vs baseline, side by side, with their ratio).
 */
import type { LoadResult } from "./harness.ts";

export interface Column {
  header: string;
  align?: "left" | "right";
}

/** Formats rows under headers, each column as wide as its widest cell. */
export function formatTable(columns: Column[], rows: string[][]): string {
  const widths = columns.map((c, i) => Math.max(c.header.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (columns[i].align === "right" ? cell.padStart(widths[i]) : cell.padEnd(widths[i])))
      .join("  ")
      .trimEnd();
  return [line(columns.map((c) => c.header)), widths.map((w) => "-".repeat(w)).join("  "), ...rows.map(line)].join("\n");
}

/** One row of a comparison: the same load against the subject and against a baseline. */
export interface ComparisonRow {
  /** What was called, e.g. "GetPipeline (cache hit)". */
  call: string;
  /** How, e.g. "gRPC, h2c". */
  protocol: string;
  concurrency: number;
  subject: LoadResult;
  baseline: LoadResult;
}

export interface Comparison {
  title: string;
  subjectName: string;
  baselineName: string;
  rows: ComparisonRow[];
  /** Lines printed under the table. */
  notes?: string[];
}

const rps = (r: LoadResult) => (r.requests === 0 ? "-" : Math.round(r.rps).toString());
const ms = (n: number | null) => (n === null || !Number.isFinite(n) ? "-" : n < 10 ? n.toFixed(2) : n.toFixed(1));
const cores = (n: number | undefined) => (n === undefined ? "-" : `${Math.round(n * 100)}%`);
const cpu = (r: LoadResult) => `${cores(r.serverCpu)}/${cores(r.clientCpu)}`;
const cpuPerCall = (r: LoadResult) => (r.serverCpu === undefined || r.rps === 0 ? "-" : Math.round((r.serverCpu * 1e6) / r.rps).toString());
const errs = (r: LoadResult) => (r.errors === 0 ? "" : ` (${r.errors} err)`);

/**
 * The comparison table; the ratio is subject/baseline requests per second. "srv us/call" is the
 * server process's CPU time per call, in microseconds: steadier than req/s on a busy machine.
 * "cpu srv/cli" is the CPU the server process and the load process used, in % of one core.
 */
export function formatComparison(c: Comparison): string {
  const s = c.subjectName;
  const b = c.baselineName;
  const columns: Column[] = [
    { header: "call" },
    { header: "protocol" },
    { header: "conc", align: "right" },
    { header: `${s} req/s`, align: "right" },
    { header: "p50 ms", align: "right" },
    { header: "p99 ms", align: "right" },
    { header: "srv us/call", align: "right" },
    { header: "cpu srv/cli", align: "right" },
    { header: `${b} req/s`, align: "right" },
    { header: "p50 ms", align: "right" },
    { header: "p99 ms", align: "right" },
    { header: "srv us/call", align: "right" },
    { header: "cpu srv/cli", align: "right" },
    { header: `${s}/${b}`, align: "right" },
  ];
  const rows = c.rows.map((r) => [
    r.call,
    r.protocol,
    String(r.concurrency),
    rps(r.subject) + errs(r.subject),
    ms(r.subject.p50),
    ms(r.subject.p99),
    cpuPerCall(r.subject),
    cpu(r.subject),
    rps(r.baseline) + errs(r.baseline),
    ms(r.baseline.p50),
    ms(r.baseline.p99),
    cpuPerCall(r.baseline),
    cpu(r.baseline),
    r.baseline.rps > 0 ? `${(r.subject.rps / r.baseline.rps).toFixed(2)}x` : "-",
  ]);
  const errors = c.rows.flatMap((r) => [
    ...(r.subject.firstError ? [`${s}, ${r.protocol}, c=${r.concurrency}: ${r.subject.firstError}`] : []),
    ...(r.baseline.firstError ? [`${b}, ${r.protocol}, c=${r.concurrency}: ${r.baseline.firstError}`] : []),
  ]);
  return [c.title, "", formatTable(columns, rows), ...(c.notes ?? []).map((n) => `  ${n}`), ...errors.map((e) => `  error: ${e}`)].join("\n");
}

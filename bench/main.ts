/**
 * `npm run bench [-- --quick] [-- --only <entry>]`: runs the bench entries one after another and
 * prints each one's table. Progress goes to stderr, tables to stdout. Nothing is asserted: the
 * numbers are for reading.
 */
import { availableParallelism, loadavg } from "node:os";
import { parseArgs } from "node:util";
import { startLoadGenerator, type BenchContext, type BenchEntry } from "./harness.ts";
import { auditEntry } from "./audit.ts";
import { authEntry } from "./auth.ts";
import { gatewayEntry } from "./gateway.ts";
import { jobsEntry } from "./jobs.ts";
import { pipelinesEntry } from "./pipelines.ts";
import { scaleEntry } from "./scale.ts";
import { webhooksEntry } from "./webhooks.ts";

const entries: BenchEntry[] = [pipelinesEntry, authEntry, jobsEntry, gatewayEntry, auditEntry, webhooksEntry, scaleEntry];

const { values } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    only: { type: "string" },
  },
});
const selected = values.only === undefined ? entries : entries.filter((e) => e.name === values.only);
if (selected.length === 0) {
  console.error(`bench: no entry "${values.only}"; entries: ${entries.map((e) => e.name).join(", ")}`);
  process.exit(1);
}

const loadAtStart = loadavg()[0];
const load = await startLoadGenerator();
const ctx: BenchContext = {
  load,
  timing: values.quick ? { rounds: 1, warmupMs: 300, durationMs: 1000 } : { rounds: 2, warmupMs: 500, durationMs: 1500 },
  progress: (line) => console.error(`  ${line}`),
};
let failed = false;
try {
  for (const entry of selected) {
    try {
      console.log(`\n${await entry.run(ctx)}\n`);
    } catch (error) {
      failed = true;
      console.error(`bench: entry "${entry.name}" failed:`, error);
    }
  }
} finally {
  await load.close();
}
// Other work on the machine skews every number; the load average says whether there was any.
console.log(
  `node ${process.version}, ${availableParallelism()} cores, 1-min load average ${loadAtStart.toFixed(2)} at start, ` +
    `${loadavg()[0].toFixed(2)} at end (the bench itself adds about 2)${values.quick ? ", --quick" : ""}`,
);
process.exitCode = failed ? 1 : 0;
// Everything is closed; if some library still holds a handle, do not hang the terminal.
setTimeout(() => {
  console.error("bench: handles still open after the run; exiting");
  process.exit();
}, 2000).unref();

// The gateway's Deno unit tests (internal/gateway/*_test.ts) inside `npm test`: this runs
// `deno test --reporter=tap` over internal/gateway/ with the Deno that npm installed, and reports
// every Deno test as a subtest here, so the suite's count and failures include them. It fails
// when deno exits non-zero (a failed test, or a type error that stops every test) or reports no
// test at all (a glob that silently matches nothing must not pass).
import t from "tap";
import { spawn } from "node:child_process";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "..");
const deno = join(root, "node_modules/.bin/deno");
// Type-checking every gateway module first is slow on a busy two-core machine.
const denoTimeoutMs = 300_000;
t.setTimeout(denoTimeoutMs + 30_000);

interface DenoResult {
  name: string;
  ok: boolean;
  skip: boolean;
  /** The failure text from the YAML block after a "not ok" line. */
  diagnostic: string;
}

function runDeno(): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(deno, ["test", "--reporter=tap", "--allow-read", "--allow-env", "--allow-net=127.0.0.1", "internal/gateway/"], {
      cwd: root,
      env: { ...process.env, NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), denoTimeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

/** Top-level TAP results ("ok 3 - name", "not ok 4 - name" + its YAML block), named with their file. */
function parseDenoTap(output: string): DenoResult[] {
  const results: DenoResult[] = [];
  let file = "";
  let current: DenoResult | undefined;
  let inBlock = false;
  for (const line of output.split("\n")) {
    if (inBlock) {
      if (line.trim() === "...") inBlock = false;
      else if (current) current.diagnostic += `${diagnosticText(line.trim())}\n`;
      continue;
    }
    const fileComment = /^# (\.\/\S+)$/.exec(line);
    if (fileComment) {
      file = fileComment[1]!;
      continue;
    }
    const result = /^(not )?ok \d+ - (.*?)(?: # (SKIP|TODO)\b.*)?$/.exec(line);
    if (result) {
      current = { name: file ? `${file}: ${result[2]}` : result[2]!, ok: !result[1], skip: result[3] !== undefined, diagnostic: "" };
      results.push(current);
      continue;
    }
    if (line === "  ---" && current) inBlock = true;
  }
  return results;
}

/** Deno writes each diagnostic as one JSON line ({"message": ..., "at": ...}); show its message. */
function diagnosticText(line: string): string {
  try {
    const parsed = JSON.parse(line) as { message?: unknown };
    // Assertion messages keep their colours even with NO_COLOR.
    return typeof parsed.message === "string" ? parsed.message.replace(/\x1b\[[0-9;]*m/g, "") : line;
  } catch {
    return line;
  }
}

const run = await runDeno();
const results = parseDenoTap(run.stdout);
for (const result of results) {
  t.test(result.name, { skip: result.skip ? "skipped in deno" : false }, (st) => {
    if (result.ok) st.pass("passed in deno");
    else st.fail(result.diagnostic.split("\n")[0] || "failed in deno", { deno: result.diagnostic.trim() });
    st.end();
  });
}
t.ok(results.length > 0, "deno test reported at least one test", { stderr: run.stderr.slice(-4000) });
t.equal(run.code, 0, "deno test exits 0", { stderr: run.stderr.slice(-4000) });

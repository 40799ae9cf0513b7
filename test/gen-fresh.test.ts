// gen/ is what the protos generate: `node scripts/gen.ts --check` (buf lint, then buf generate
// into a scratch directory and a diff against gen/) passes on the checkout and fails once a
// proto changes without regenerating. Both run on a copy of the contracts in a temporary
// directory, so this test writes nothing into the checkout (.jobmesh/gen included).
import t from "tap";
import { execFile, execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "..");

function hasProtoc(): boolean {
  try {
    execFileSync("protoc", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** A throwaway copy of what gen.ts reads: the protos, the buf configs, gen/ and the script. */
function copyOfContracts(): string {
  const dir = mkdtempSync(join(tmpdir(), "jobmesh-gen-"));
  for (const path of ["proto", "gen", "scripts/gen.ts", "buf.yaml", "buf.gen.yaml", "package.json"]) {
    cpSync(join(root, path), join(dir, path), { recursive: true });
  }
  symlinkSync(join(root, "node_modules"), join(dir, "node_modules"), "dir");
  return dir;
}

/** Runs `node scripts/gen.ts --check` in `dir` with node_modules/.bin on the PATH. */
function genCheck(dir: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [join(dir, "scripts/gen.ts"), "--check"],
      { cwd: dir, env: { ...process.env, PATH: `${join(root, "node_modules/.bin")}:${process.env.PATH}` }, timeout: 60_000 },
      (error, stdout, stderr) => resolve({ code: error ? (typeof error.code === "number" ? error.code : -1) : 0, output: stdout + stderr }),
    );
  });
}

const skip = hasProtoc() ? false : "protoc is not on the PATH (apt-get install protobuf-compiler)";

/** The copy as it is, and a copy where a proto changed but gen/ was not regenerated; checked at once. */
function startChecks() {
  const fresh = copyOfContracts();
  const stale = copyOfContracts();
  const proto = join(stale, "proto/jobmesh/v1/pipelines.proto");
  const text = readFileSync(proto, "utf8");
  const changed = text.replace(/(message PipelineViolation \{\n)/, "$1  // A hint on how to fix it.\n  string hint = 4;\n");
  writeFileSync(proto, changed);
  t.teardown(() => {
    rmSync(fresh, { recursive: true, force: true });
    rmSync(stale, { recursive: true, force: true });
  });
  return { fresh: genCheck(fresh), stale: genCheck(stale), edited: changed !== text };
}
const checks = skip ? undefined : startChecks();

t.test("gen - gen/ is exactly what the protos generate", { skip }, async (t) => {
  const { code, output } = await checks!.fresh;
  t.equal(code, 0, output);
  t.match(output, /gen\/ is fresh/);
});

t.test("gen - a proto changed without regenerating fails the check", { skip }, async (t) => {
  t.ok(checks!.edited, "the proto was edited");
  const { code, output } = await checks!.stale;
  t.equal(code, 1, "exit 1");
  t.match(output, /gen\/ is stale: run `npm run gen`/);
});

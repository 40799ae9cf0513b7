/**
 * A client in another language, generated from our protos by protoc (not from our TypeScript),
 * calls PipelineService over native gRPC: Python with Debian's python3-grpcio.
 */
import t from "tap";
import { execFile, execFileSync, spawnSync } from "node:child_process";
import { promisify } from "node:util";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startTestMesh } from "./support/mesh.ts";

const root = join(import.meta.dirname, "..");
const python = "/usr/bin/python3";
const hasGrpc = spawnSync(python, ["-c", "import grpc"]).status === 0;
const hasProtoc = spawnSync("protoc", ["--version"]).status === 0;

t.test("python - a protoc-generated client calls GetPipeline and gets INVALID_ARGUMENT for a bad name", { skip: !hasGrpc || !hasProtoc ? "needs /usr/bin/python3 with grpc (apt-get install python3-grpcio) and protoc" : false }, async (t) => {
  const out = mkdtempSync(join(tmpdir(), "jobmesh-py-"));
  t.teardown(() => rmSync(out, { recursive: true, force: true }));
  // The image that `npm run gen` compiles; rebuilt here so the test does not depend on a prior run.
  execFileSync(process.execPath, [join(root, "scripts/gen.ts"), "--check"], {
    cwd: root,
    env: { ...process.env, PATH: `${join(root, "node_modules/.bin")}:${process.env.PATH}` },
    stdio: "ignore",
  });
  execFileSync("protoc", [
    `--descriptor_set_in=${join(root, ".jobmesh/gen/image.binpb")}`,
    `--python_out=${out}`,
    "jobmesh/v1/pipelines.proto", "jobmesh/v1/options.proto", "buf/validate/validate.proto",
    "google/api/annotations.proto", "google/api/http.proto", "google/api/field_behavior.proto",
    "google/api/resource.proto", "google/api/client.proto", "google/api/launch_stage.proto",
  ]);
  const mesh = await startTestMesh({}, { auth: true });
  t.teardown(() => mesh.close());
  const target = new URL(mesh.pipelines.url).host;
  const token = await mesh.auth!.tokenFor("admin");
  // Asynchronously: the server runs in this process, so a synchronous spawn would starve it.
  const result = await promisify(execFile)(python, [join(root, "test/clients/python_client.py"), target, out, token], { encoding: "utf8", timeout: 30_000 });
  t.equal(result.stderr, "");
  const [first, second] = result.stdout.trim().split("\n");
  t.equal(first, "pipelines/document-default 5");
  t.match(second, /^INVALID_ARGUMENT .*name/);
});

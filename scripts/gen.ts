/**
 * Regenerates gen/ from proto/ fully offline.
 *
 * buf.validate/validate.proto ships in no npm package as source, but @bufbuild/protovalidate
 * exports its compiled descriptor. We write that descriptor (and its imports) as a
 * FileDescriptorSet, compile our protos with protoc against it, and hand the resulting image to
 * `buf lint` and `buf generate`. google/api and google/rpc sources come from google-proto-files;
 * the gRPC health and reflection protos come from grpc-health-check and @grpc/reflection.
 *
 *   node scripts/gen.ts           regenerate gen/ (and write .jobmesh/gen/image.binpb)
 *   node scripts/gen.ts --check   fail when gen/ is not what the protos generate
 *   node scripts/gen.ts --check --breaking <git-ref>   also fail on breaking changes since that commit
 */
import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { create, toBinary, type DescFile } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import { file_buf_validate_validate } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";

const root = resolve(import.meta.dirname, "..");
const bin = (name: string) => join(root, "node_modules/.bin", name);
const run = (cmd: string, args: string[], cwd = root) =>
  execFileSync(cmd, args, { cwd, stdio: "inherit", env: { ...process.env, PATH: `${join(root, "node_modules/.bin")}:${process.env.PATH}` } });

/** The generated files we serve or import, besides our own package. */
const thirdPartyPaths = [
  "google/api/annotations.proto",
  "google/api/http.proto",
  "google/api/field_behavior.proto",
  "google/api/resource.proto",
  "google/api/client.proto",
  "google/api/launch_stage.proto",
  "google/rpc/error_details.proto",
  "grpc/health/v1/health.proto",
  "grpc/reflection/v1/reflection.proto",
  "grpc/reflection/v1alpha/reflection.proto",
];

function collect(file: DescFile, out: Map<string, FileDescriptorProto>) {
  if (out.has(file.name)) return;
  for (const dep of file.dependencies) collect(dep, out);
  out.set(file.name, file.proto);
}

/** Compiles proto/ into a buf image under `dir`; returns its path. */
export function compileImage(dir: string, protoRoot = join(root, "proto")): string {
  mkdirSync(dir, { recursive: true });
  const files = new Map<string, FileDescriptorProto>();
  collect(file_buf_validate_validate, files);
  const validateSet = join(dir, "buf-validate.binpb");
  writeFileSync(validateSet, toBinary(FileDescriptorSetSchema, create(FileDescriptorSetSchema, { file: [...files.values()] })));

  // The health and reflection protos live at non-canonical paths in their npm packages;
  // copy them to their canonical import paths so descriptors served by reflection say
  // "grpc/health/v1/health.proto" like every other gRPC server.
  const grpcInclude = join(dir, "grpc-include");
  rmSync(grpcInclude, { recursive: true, force: true });
  cpSync(join(root, "node_modules/grpc-health-check/proto/health/v1/health.proto"), join(grpcInclude, "grpc/health/v1/health.proto"));
  cpSync(join(root, "node_modules/@grpc/reflection/build/proto/grpc/reflection"), join(grpcInclude, "grpc/reflection"), { recursive: true });

  const ours = readdirSync(join(protoRoot, "jobmesh/v1")).filter((f) => f.endsWith(".proto")).sort().map((f) => `jobmesh/v1/${f}`);
  const image = join(dir, "image.binpb");
  run("protoc", [
    `--descriptor_set_in=${validateSet}`,
    `-I${protoRoot}`,
    "-Inode_modules/google-proto-files",
    `-I${grpcInclude}`,
    "--include_imports",
    "--include_source_info",
    `--descriptor_set_out=${image}`,
    ...ours,
    ...thirdPartyPaths,
  ]);
  return image;
}

/** Runs buf generate with buf.gen.yaml; its `out: gen` lands under `baseDir`. */
function generate(image: string, baseDir: string) {
  run(bin("buf"), ["generate", image, "--template", join(root, "buf.gen.yaml"), "--output", baseDir, "--path", "jobmesh", ...thirdPartyPaths.flatMap((p) => ["--path", p])]);
}

const args = process.argv.slice(2);
const dir = join(root, ".jobmesh/gen");
const image = compileImage(dir);
run(bin("buf"), ["lint", image, "--path", "jobmesh", "--config", join(root, "buf.yaml")]);
const breakingIdx = args.indexOf("--breaking");
if (breakingIdx >= 0) {
  // Compile the older commit's protos the same way and let buf compare the two images.
  const ref = args[breakingIdx + 1];
  const old = join(dir, "against");
  rmSync(old, { recursive: true, force: true });
  mkdirSync(old, { recursive: true });
  execFileSync("sh", ["-c", `git archive ${JSON.stringify(ref)} proto | tar -x -C ${JSON.stringify(old)}`], { cwd: root, stdio: "inherit" });
  const oldImage = compileImage(join(old, "image"), join(old, "proto"));
  run(bin("buf"), ["breaking", image, "--against", oldImage, "--path", "jobmesh", "--config", join(root, "buf.yaml")]);
  console.log(`no breaking changes since ${ref}`);
}
if (args.includes("--check")) {
  const fresh = join(dir, "check");
  rmSync(fresh, { recursive: true, force: true });
  generate(image, fresh);
  try {
    execFileSync("diff", ["-r", join(fresh, "gen"), join(root, "gen")], { stdio: "inherit" });
  } catch {
    console.error("gen/ is stale: run `npm run gen` and commit the result");
    process.exit(1);
  }
  console.log("gen/ is fresh");
} else {
  generate(image, root);
  console.log("generated gen/");
}

// deploy/ against the code it deploys: every environment variable the files set is one that
// internal/config reads, every process they start exists, and the ports they expose are the
// ports the processes listen on. (Nothing here can run Docker or Kubernetes; this keeps the files
// from drifting away from the code.)
import t from "tap";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { loadConfig } from "../internal/config/index.ts";

const root = join(import.meta.dirname, "..");
const deployFiles = (dir = join(root, "deploy")): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? deployFiles(join(dir, e.name)) : [join(dir, e.name)]));
const read = (path: string) => readFileSync(path, "utf8");

t.test("deploy - every variable set in deploy/ is read by internal/config", async (t) => {
  const source = read(join(root, "internal", "config", "index.ts"));
  const known = new Set([...source.matchAll(/"((?:JOBMESH_|DATABASE_|REDIS_|NATS_)[A-Z_]+)"|env\.([A-Z_]+)/g)].map((m) => m[1] ?? m[2]));
  t.ok(known.has("JOBMESH_WORKER_METRICS_PORT") && known.has("DATABASE_URL"), "the config's names were found");
  for (const file of deployFiles()) {
    // Assignments only (NAME=, NAME:, - NAME), not prose in comments.
    const lines = read(file).split("\n").filter((line) => !/^\s*#/.test(line));
    const used = new Set(lines.flatMap((line) => [...line.matchAll(/\b((?:JOBMESH_|DATABASE_URL|REDIS_URL|NATS_URL)[A-Z_]*)\s*[:=]/g)].map((m) => m[1])));
    for (const name of used) t.ok(known.has(name), `${file.slice(root.length + 1)}: ${name} is a variable jobmesh reads`);
  }
});

t.test("deploy - the processes started exist, on the ports they listen on", async (t) => {
  const ports = loadConfig({}).ports;
  const portOf: Record<string, number> = { audit: ports.audit, auth: ports.auth, pipelines: ports.pipelines, jobs: ports.jobs, webhooks: ports.webhooks, worker: ports.workerMetrics };
  const k8s = read(join(root, "deploy", "kubernetes", "jobmesh.yaml"));
  const started = [...k8s.matchAll(/command: \["node", "cmd\/(\w+)\/main\.ts"\]\s+envFrom:[\s\S]*?containerPort: (\d+)/g)];
  t.same(started.map((m) => m[1]).sort(), ["audit", "auth", "jobs", "pipelines", "webhooks", "worker"], "Kubernetes runs the six processes");
  for (const [, binary, port] of started) {
    t.ok(existsSync(join(root, "cmd", binary, "main.ts")), `cmd/${binary}/main.ts exists`);
    t.equal(Number(port), portOf[binary], `${binary} listens on ${portOf[binary]}`);
  }
  const compose = read(join(root, "deploy", "compose.yaml"));
  for (const binary of ["audit", "auth", "pipelines", "jobs", "webhooks", "worker"]) {
    t.match(compose, new RegExp(`command: \\["node", "cmd/${binary}/main\\.ts"\\]`), `compose runs ${binary}`);
  }
  for (const [binary, port] of Object.entries(portOf).filter(([b]) => b !== "worker")) {
    t.match(compose, new RegExp(`"${port}:${port}"`), `compose publishes ${binary} on ${port}`);
  }
  t.match(read(join(root, "deploy", "prometheus.yml")), new RegExp(`port: ${ports.workerMetrics}`), "Prometheus scrapes the workers' metrics port");
});

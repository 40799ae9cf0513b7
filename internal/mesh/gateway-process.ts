/**
 * Runs the Deno gateway (cmd/gateway) as a child process beside the Node services: `jobmesh up`
 * starts it with the rest, and tests start one in front of their own mesh. The gateway prints one
 * JSON line with msg "serving" and its URL when it listens; that line is what we wait for.
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { join, resolve } from "node:path";
import { createProcessGuard } from "../devstack/process-guard.ts";

const repoRoot = join(import.meta.dirname, "../..");
/** The Deno binary the `deno` npm package installs; no network access at run time (nodeModulesDir "manual"). */
export const denoBinary = join(repoRoot, "node_modules/.bin/deno");
const denoCacheDir = join(repoRoot, ".jobmesh/deno");
/**
 * What the gateway may touch: the network, its environment, the repo's files only (its code, gen/,
 * the swagger-ui assets), the OS (ioredis asks for the hostname); and, when it records its
 * refusals (JOBMESH_GATEWAY_AUDIT_SPOOL_DIR), its audit spool directory and nothing else on disk.
 */
function permissionsOf(env: Record<string, string>): string[] {
  const spoolDir = env.JOBMESH_GATEWAY_AUDIT_SPOOL_DIR ? resolve(repoRoot, env.JOBMESH_GATEWAY_AUDIT_SPOOL_DIR) : undefined;
  if (spoolDir?.includes(",")) throw new Error(`JOBMESH_GATEWAY_AUDIT_SPOOL_DIR cannot hold a comma (Deno's permission lists are comma-separated): ${spoolDir}`);
  const readable = spoolDir ? `${repoRoot},${spoolDir}` : repoRoot;
  return ["--allow-net", "--allow-env", `--allow-read=${readable}`, ...(spoolDir ? [`--allow-write=${spoolDir}`] : []), "--allow-sys"];
}
/**
 * Deno.serve's request.signal then fires only when the client goes away (the legacy behaviour,
 * which Deno warns about, also fires it after every answer): how the gateway stops a backend call
 * whose client left before the answer started.
 */
const runtimeFlags = ["--unstable-no-legacy-abort"];

export interface GatewayProcess {
  url: string;
  pid: number;
  /** Every line it printed (JSON log lines, one per request), for tests and error messages. */
  output(): string;
  /** Settles with a one-line reason once it has exited. */
  exited: Promise<string>;
  /** SIGTERM (it drains), SIGKILL after `timeoutMs` (default: past the gateway's own 10 s grace period). Safe to call twice. */
  stop(timeoutMs?: number): Promise<void>;
}

export interface GatewayProcessOptions {
  startTimeoutMs?: number;
  /** Every whole line it prints, as it prints it. */
  onLine?: (line: string) => void;
  /** OTLP/HTTP base URL (JOBMESH_OTLP_ENDPOINT) the gateway exports its spans to; none are made without it. */
  otlpEndpoint?: string;
}

/**
 * Deno's built-in OpenTelemetry, switched on for traces only: a server span per request
 * (Deno.serve) and a client span per call to a service (fetch, which writes the traceparent).
 * JSON to the same /v1/traces URL the services' exporter posts to, so one receiver takes both;
 * the console stays the access log and metrics stay on /metrics.
 */
function otelEnvironment(otlpEndpoint: string): Record<string, string> {
  return {
    OTEL_DENO: "true",
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: new URL("/v1/traces", otlpEndpoint).href,
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_SERVICE_NAME: "jobmesh-gateway",
    OTEL_DENO_CONSOLE: "ignore",
    OTEL_DENO_METRICS: "false",
  };
}

/** Starts the gateway with `env` (JOBMESH_* and REDIS_URL; PATH and HOME are added) and waits until it serves. */
export async function startGatewayProcess(env: Record<string, string>, options: GatewayProcessOptions = {}): Promise<GatewayProcess> {
  const child = spawn(denoBinary, ["run", ...runtimeFlags, ...permissionsOf(env), join(repoRoot, "cmd/gateway/main.ts")], {
    cwd: repoRoot,
    // Nothing of this process's environment is inherited: the gateway's settings are `env` (so no
    // OTEL_* of ours reaches it either: without otlpEndpoint it exports nothing). The binary is
    // named by its path, and Deno keeps its compile cache in the repository's data directory.
    env: { DENO_DIR: denoCacheDir, DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1", ...(options.otlpEndpoint ? otelEnvironment(options.otlpEndpoint) : {}), ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  // A gateway outlives nothing: if this process dies however it dies, the guard's watchdog ends it.
  const guard = createProcessGuard();
  let output = "";
  let onLine: ((line: string) => void) | undefined;
  let partial = "";
  const read = (chunk: Buffer) => {
    output += chunk.toString("utf8");
    if (output.length > 4_000_000) output = output.slice(-2_000_000);
    partial += chunk.toString("utf8");
    let nl;
    while ((nl = partial.indexOf("\n")) >= 0) {
      const line = partial.slice(0, nl);
      options.onLine?.(line);
      onLine?.(line);
      partial = partial.slice(nl + 1);
    }
  };
  child.stdout.on("data", read);
  child.stderr.on("data", read);
  const exited = new Promise<string>((resolve) => {
    child.once("close", (code, signal) => {
      guard.close();
      resolve(`gateway exited (${signal ?? `code ${code}`}): ${output.trim().split("\n").at(-1) ?? ""}`);
    });
  });
  await once(child, "spawn");
  const pid = child.pid!;
  guard.watch(pid, "SIGKILL");

  let stopping: Promise<void> | undefined;
  const stop = (timeoutMs = 15_000) => {
    stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
        await exited;
        clearTimeout(timer);
      }
      guard.forget(pid);
    })();
    return stopping;
  };

  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the gateway did not serve within ${options.startTimeoutMs ?? 60_000} ms: ${output.slice(-1000)}`)), options.startTimeoutMs ?? 60_000);
    onLine = (line) => {
      try {
        const entry = JSON.parse(line) as { msg?: string; url?: string };
        if (entry.msg === "serving" && entry.url) {
          clearTimeout(timer);
          resolve(entry.url);
        }
      } catch {
        // not a log line (Deno's own messages): kept in output only
      }
    };
    void exited.then((reason) => {
      clearTimeout(timer);
      reject(new Error(reason));
    });
  }).catch(async (error: unknown) => {
    await stop(1_000);
    throw error;
  });
  onLine = undefined;
  return { url, pid, output: () => output, exited, stop };
}

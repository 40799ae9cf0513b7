/**
 * Readiness of a server's dependencies. /readyz reports each check; the health service follows
 * the same answer, re-checked on a short interval so Watch clients see a dependency go away.
 * /readyz is public, so it says only ok or down per dependency: a driver's error names hosts,
 * ports and users, and that detail goes to the log (once per change), not to the caller.
 */
import type { Logger } from "../telemetry/index.ts";
import type { HealthServer } from "./health.ts";

/** Named dependency checks; each resolves when the dependency answers and throws otherwise. */
export type ReadinessChecks = Record<string, () => Promise<unknown>>;

export interface ReadinessReport {
  ready: boolean;
  checks: Record<string, { ok: boolean; state: "ok" | "down"; latencyMs: number }>;
}

const checkTimeoutMs = 1500;
const recheckIntervalMs = 2000;

export function createReadiness(checks: ReadinessChecks, health: HealthServer, log: Logger) {
  let timer: NodeJS.Timeout | undefined;
  let last: boolean | undefined;
  // The error last logged per dependency: a dependency that stays down is logged once, not every 2 s.
  const logged = new Map<string, string>();

  async function check(): Promise<ReadinessReport> {
    const entries = await Promise.all(
      Object.entries(checks).map(async ([name, run]) => {
        const started = performance.now();
        try {
          await withTimeout(run(), checkTimeoutMs);
          if (logged.delete(name)) log.info({ dependency: name }, "dependency answers again");
          return [name, { ok: true, state: "ok" as const, latencyMs: Math.round(performance.now() - started) }] as const;
        } catch (error) {
          const message = error instanceof Error ? error.message : String(error);
          if (logged.get(name) !== message) {
            logged.set(name, message);
            log.warn({ dependency: name, err: message }, "dependency check failed");
          }
          return [name, { ok: false, state: "down" as const, latencyMs: Math.round(performance.now() - started) }] as const;
        }
      }),
    );
    const report = { ready: entries.every(([, r]) => r.ok), checks: Object.fromEntries(entries) };
    if (report.ready !== last) {
      last = report.ready;
      health.setAll(report.ready ? "SERVING" : "NOT_SERVING");
      if (!report.ready) log.warn({ down: entries.flatMap(([name, r]) => (r.ok ? [] : [name])) }, "not ready");
    }
    return report;
  }

  return {
    check,
    start() {
      void check();
      timer = setInterval(() => void check(), recheckIntervalMs);
      timer.unref();
    },
    stop() {
      clearInterval(timer);
    },
  };
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

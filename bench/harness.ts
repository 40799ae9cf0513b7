/**
 * The load harness: a closed loop of N concurrent workers, each issuing its next call as soon as
 * the previous one settles, first for a warm-up (connections, JIT, caches) and then for a measured
 * window of a duration or a request count.
 *
 * The load runs in a child process (`load-generator.ts`) so that, on a small machine, the client
 * and the server under test each get a core instead of sharing one event loop, and so that the
 * server process's RSS is the server's alone. A bench entry names a module and an exported
 * factory that builds the call there; see `CallFactory`.
 */
import { fork, type ChildProcess } from "node:child_process";
import { createHistogram, type RecordableHistogram } from "node:perf_hooks";

export interface LoadOptions {
  /** Closed-loop workers, each with at most one call in flight. */
  concurrency: number;
  /** Unmeasured load before the window, to open connections and warm up both sides. */
  warmupMs: number;
  /** Length of the measured window; ignored when `requests` is set. */
  durationMs?: number;
  /** Measure this many calls instead of a duration. */
  requests?: number;
}

export interface LoadResult {
  /** Calls completed per second inside the measured window. */
  rps: number;
  /** Latency percentiles in milliseconds, over calls started inside the window; NaN (null once
   * sent between processes) when no call succeeded. */
  p50: number;
  p99: number;
  requests: number;
  errors: number;
  /** The first error's message, so a failing row does not pass for a slow one. */
  firstError?: string;
  /** CPU used by the load process in the window, in cores (1 = one core busy throughout). */
  clientCpu: number;
  /**
   * CPU used by the process that started the load generator, where the servers under test run,
   * in cores over the same window. Near 1 means the server's event loop was saturated; well
   * below 1 with clientCpu near 1 means the client was the bottleneck.
   */
  serverCpu?: number;
}

/** Raw measurements of one run, or of several runs of a series pooled together. */
export interface LoadSample {
  histogram: RecordableHistogram;
  requests: number;
  errors: number;
  firstError?: string;
  seconds: number;
  clientCpuSeconds: number;
}

/** Runs `call` under closed-loop load in this process. */
export async function runLoad(call: () => Promise<unknown>, options: LoadOptions): Promise<LoadResult> {
  return summarize(await sampleLoad(call, options));
}

/** Like `runLoad`, but returns the raw sample so that runs can be pooled (`poolInto`). */
export async function sampleLoad(call: () => Promise<unknown>, options: LoadOptions, onWindowStart?: () => void): Promise<LoadSample> {
  const histogram = createHistogram();
  let errors = 0;
  let firstError: string | undefined;
  let measuring = false;
  let stopped = false;
  let measured = 0;
  let started = 0;

  const worker = async () => {
    while (!stopped) {
      const inWindow = measuring;
      if (inWindow && options.requests !== undefined && started++ >= options.requests) break;
      const t0 = process.hrtime.bigint();
      try {
        await call();
      } catch (error) {
        if (inWindow) {
          errors++;
          firstError ??= error instanceof Error ? error.message : String(error);
        }
        continue;
      }
      if (inWindow) {
        histogram.record(process.hrtime.bigint() - t0);
        measured++;
      }
    }
  };

  const workers = Array.from({ length: options.concurrency }, worker);
  await sleep(options.warmupMs);
  measuring = true;
  onWindowStart?.();
  const windowStart = performance.now();
  const cpuStart = process.cpuUsage();
  if (options.requests === undefined) {
    await sleep(options.durationMs ?? 3000);
    stopped = true;
  }
  // With a duration, calls still in flight when the window closes finish (and count) here;
  // at most `concurrency` of them, which the window length dwarfs.
  await Promise.all(workers);
  const cpu = process.cpuUsage(cpuStart);
  return {
    histogram,
    requests: measured,
    errors,
    firstError,
    seconds: (performance.now() - windowStart) / 1000,
    clientCpuSeconds: (cpu.user + cpu.system) / 1e6,
  };
}

/** Adds `sample` to `pool` (the pool's histogram absorbs the sample's). */
export function poolInto(pool: LoadSample, sample: LoadSample): LoadSample {
  pool.histogram.add(sample.histogram);
  pool.requests += sample.requests;
  pool.errors += sample.errors;
  pool.firstError ??= sample.firstError;
  pool.seconds += sample.seconds;
  pool.clientCpuSeconds += sample.clientCpuSeconds;
  return pool;
}

export function summarize(sample: LoadSample): LoadResult {
  const { histogram } = sample;
  const ms = (ns: number) => (histogram.count > 0 ? ns / 1e6 : NaN);
  return {
    rps: sample.requests / sample.seconds,
    p50: ms(histogram.percentile(50)),
    p99: ms(histogram.percentile(99)),
    requests: sample.requests,
    errors: sample.errors,
    firstError: sample.firstError,
    clientCpu: sample.clientCpuSeconds / sample.seconds,
  };
}

/**
 * What a load module exports under the name the entry gives: builds the call once in the load
 * process from JSON-serialisable arguments, and closes its connections afterwards.
 */
export type CallFactory<A> = (args: A) => { call: () => Promise<unknown>; close?: () => void | Promise<void> };

export interface LoadSpec {
  /** URL of the module exporting the factory, e.g. `new URL("./x-client.ts", import.meta.url).href`. */
  module: string;
  factory: string;
  args: unknown;
  options: LoadOptions;
  /**
   * Runs with the same series are pooled: the result covers every run of the series so far.
   * Alternating short rounds of two series spreads the machine's background noise over both.
   */
  series?: string;
}

export interface LoadGenerator {
  run(spec: LoadSpec): Promise<LoadResult>;
  close(): Promise<void>;
}

/** Starts the load process; one run at a time, so the server under test never sees two loads. */
export async function startLoadGenerator(): Promise<LoadGenerator> {
  const child: ChildProcess = fork(new URL("./load-generator.ts", import.meta.url), [], {
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  await new Promise<void>((resolve, reject) => {
    child.once("error", reject);
    child.once("message", () => resolve()); // the child says it is ready
  });
  let queue = Promise.resolve<unknown>(undefined);
  // Server CPU pooled per series, as the load process pools the rest.
  const serverCpu = new Map<string, { seconds: number; cpuSeconds: number }>();
  return {
    run(spec) {
      const result = queue.then(
        () =>
          new Promise<LoadResult>((resolve, reject) => {
            let window: { cpu: NodeJS.CpuUsage; at: number } | undefined;
            const onExit = (code: number | null) => reject(new Error(`load generator exited (${code}) during a run`));
            const onMessage = (reply: { windowStart?: true; result?: LoadResult; error?: string }) => {
              if (reply.windowStart) {
                window = { cpu: process.cpuUsage(), at: performance.now() };
                return;
              }
              child.off("message", onMessage);
              child.off("exit", onExit);
              if (reply.error !== undefined) return reject(new Error(`load generator: ${reply.error}`));
              const result = reply.result!;
              if (window) {
                const cpu = process.cpuUsage(window.cpu);
                const run = { seconds: (performance.now() - window.at) / 1000, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
                let total = run;
                if (spec.series !== undefined) {
                  const earlier = serverCpu.get(spec.series);
                  if (earlier) {
                    earlier.seconds += run.seconds;
                    earlier.cpuSeconds += run.cpuSeconds;
                    total = earlier;
                  } else serverCpu.set(spec.series, run);
                }
                result.serverCpu = total.cpuSeconds / total.seconds;
              }
              resolve(result);
            };
            child.once("exit", onExit);
            child.on("message", onMessage);
            child.send(spec);
          }),
      );
      queue = result.catch(() => undefined);
      return result;
    },
    async close() {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.disconnect();
      await exited;
    },
  };
}

/** What `main.ts` passes to every entry. */
export interface BenchContext {
  load: LoadGenerator;
  /**
   * Each cell is measured in `rounds` rounds per side, alternating sides and pooled, each round
   * a warm-up then a window (`--quick`: one short round).
   */
  timing: { rounds: number; warmupMs: number; durationMs: number };
  /** Progress lines, on stderr so stdout keeps only the tables. */
  progress(line: string): void;
}

/** One bench entry: sets up what it measures, measures, tears everything down, returns its table. */
export interface BenchEntry {
  name: string;
  run(ctx: BenchContext): Promise<string>;
}

function sleep(ms: number) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The pool of threads the CPU-bound stages run in (piscina), so that a document cannot stall or
 * crash the worker that other tenants share. On the worker's event loop, synchronous stage work
 * could not be stopped by a timeout or a cancel, and it stopped the heartbeats of every attempt
 * the worker held. In a thread, a timeout or cancel terminates the thread (the pool starts a new
 * one), and each thread has its own heap limit: a stage that exceeds it, crashes or exits loses
 * its own attempt (StageThreadLost) while the worker and its other attempts go on.
 *
 * I/O stays on the worker's thread: the stage thread gets bytes and options and answers with the
 * stage's plain result (structured clone).
 */
import type { Meter } from "@opentelemetry/api";
import { Piscina } from "piscina";
import { MessageChannel, type Transferable } from "node:worker_threads";
import { PermanentStageError, TransientStageError } from "../stages/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { runPooledCall, type PooledCall, type PooledResult, type ThreadReply, type ThreadTask } from "./stage-thread.ts";

export type { PooledCall, PooledResult } from "./stage-thread.ts";

/** The thread a stage ran in died under it (heap limit, crash, exit): the attempt is lost, not failed by the stage. */
export class StageThreadLost extends Error {
  override name = "StageThreadLost";
}

export interface StagePoolOptions {
  /** Threads, each running one stage at a time; more stages wait for a free thread. */
  threads: number;
  /** Heap limit of each thread (V8 old generation), in MiB. */
  heapMb: number;
  log: Logger;
  meter: Meter;
}

export interface StagePool {
  /**
   * Runs a stage call in a thread (a small one, up to inlineLimit, on the caller's thread). The
   * call's bytes are handed over (transferred), not copied: the caller must not use them
   * afterwards. `onStart` is called when the stage begins (in a thread: when one takes it).
   * Rejects with the stage's error, with `signal.reason` once the signal aborted (the thread is
   * terminated), or with StageThreadLost.
   */
  run<C extends PooledCall>(call: C, signal: AbortSignal, onStart?: () => void): Promise<PooledResult<C>>;
  /** Terminates every thread; waiting calls reject. */
  destroy(): Promise<void>;
}

/**
 * How long a stage that was asked to abort may take to end on its own before its thread is
 * terminated. A stage that awaits (PDF, DOCX parsing) sees its signal and ends, and its thread
 * is kept (starting a thread costs a second or more of CPU: it loads every format library); a
 * stage stuck in synchronous work never looks, and its thread is terminated.
 */
const abortGraceMs = 100;

/**
 * Inputs up to this size run on the worker's own thread. For them the hop to a thread (a message
 * channel, a copy each way, waking the thread) costs more than the stage itself — it halved the
 * bench's jobs/s for small text documents — and their work is bounded: every pass over a
 * document's content is linear or at worst polynomial in it, which for 1 KiB is at most a few
 * milliseconds. Compressed formats (PDF, DOCX) always go to a thread, since a small file can
 * inflate to maxInflatedBytes; detect only peeks into a zip, and 1 KiB of deflate inflates to at
 * most about 1 MiB.
 */
const inlineLimit = 1024;

/** Media types parse reads as text: no decompression, so their work is bounded by their size. */
function isTextMediaType(mediaType: string): boolean {
  const type = mediaType.split(";")[0]!.trim().toLowerCase();
  return type.startsWith("text/") || type === "application/json";
}

/** The characters (and items) enrich reads, counted up to just past `limit`. */
function enrichSize(input: Extract<PooledCall, { stage: "enrich" }>["input"], limit: number): number {
  let size = input.text.length;
  for (const h of input.headings ?? []) if ((size += h.text.length + 1) > limit) return size;
  for (const table of input.tables ?? []) for (const row of table.rows) for (const cell of row) if ((size += cell.length + 1) > limit) return size;
  for (const l of input.links ?? []) if ((size += l.href.length + l.text.length + 1) > limit) return size;
  return size;
}

/** Whether a call's input is small enough to run on the worker's own thread (inlineLimit). */
function isSmall(call: PooledCall): boolean {
  switch (call.stage) {
    case "detect":
      return call.input.bytes.byteLength <= inlineLimit;
    case "parse":
      return call.input.bytes.byteLength <= inlineLimit && isTextMediaType(call.input.mediaType);
    case "enrich":
      return enrichSize(call.input, inlineLimit) <= inlineLimit;
  }
}

/** Bytes the pool may transfer: a copy unless they are a whole ArrayBuffer of their own. */
function owned(bytes: Uint8Array): Uint8Array {
  return bytes.buffer instanceof ArrayBuffer && bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes : new Uint8Array(bytes);
}

/** Why a thread died, as a metric label and as the attempt's message says it (no document content, no stack). */
function lostReason(error: unknown, heapMb: number): { label: string; text: string } {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === "ERR_WORKER_OUT_OF_MEMORY") return { label: "heap_limit", text: `it exceeded its heap limit of ${heapMb} MiB` };
  const exit = /worker exited with code: (-?\d+)/.exec(String((error as Error | null)?.message));
  if (exit) return { label: "exited", text: `it exited with code ${exit[1]}` };
  return { label: "crashed", text: "it crashed" };
}

export function createStagePool(options: StagePoolOptions): StagePool {
  const { heapMb, log, meter } = options;
  const busy = meter.createUpDownCounter("jobmesh.stage.threads.busy", { description: "Stage threads running a stage" });
  const waiting = meter.createUpDownCounter("jobmesh.stage.threads.waiting", { description: "Stages waiting for a free stage thread" });
  const terminated = meter.createCounter("jobmesh.stage.threads.terminated", { description: "Stage threads terminated to stop a stage (timeout, cancel, worker stopping), by stage" });
  const lost = meter.createCounter("jobmesh.stage.threads.lost", { description: "Stage threads that died during a stage, by stage and reason (heap_limit, exited, crashed)" });
  let pool: Piscina<ThreadTask, ThreadReply> | undefined;
  /**
   * The pool, made when the first stage needs it: a new thread loads the format libraries (a
   * second or more of CPU) before its first stage, which a worker starting up should not spend
   * for stages it may never run. From then on it keeps all its threads, and starts one in place
   * of each that is terminated or dies.
   */
  function poolOf(): Piscina<ThreadTask, ThreadReply> {
    if (pool) return pool;
    pool = new Piscina<ThreadTask, ThreadReply>({
      filename: new URL("./stage-thread.ts", import.meta.url).href,
      minThreads: options.threads,
      maxThreads: options.threads,
      resourceLimits: { maxOldGenerationSizeMb: heapMb },
      // None of the process's command-line options: --max-old-space-size would override the heap
      // limit, and module hooks registered with --import (a test runner's, a tracer's) would make
      // every thread load its modules through them (twice as slow to start under tap).
      execArgv: [],
      recordTiming: false,
    });
    // A thread that failed with no stage on it (the pool replaces it); without a listener the
    // pool's 'error' event would throw in the worker.
    pool.on("error", (error: unknown) => log.warn({ err: error }, "a stage thread failed between stages"));
    return pool;
  }

  async function run<C extends PooledCall>(call: C, signal: AbortSignal, onStart?: () => void): Promise<PooledResult<C>> {
    signal.throwIfAborted();
    if (isSmall(call)) {
      onStart?.();
      return runPooledCall(call, signal);
    }
    const { port1, port2 } = new MessageChannel();
    const transferList: Transferable[] = [port2];
    let sent: PooledCall = call;
    if (call.stage !== "enrich") {
      const bytes = owned(call.input.bytes);
      transferList.push(bytes.buffer as ArrayBuffer);
      sent = { ...call, input: { ...call.input, bytes } } as PooledCall;
    }
    const attrs = { stage: call.stage };
    let started = false;
    waiting.add(1, attrs);
    port1.on("message", () => {
      started = true;
      waiting.add(-1, attrs);
      busy.add(1, attrs);
      onStart?.();
    });
    // Terminates the thread: at once if the stage has not started, after the grace if it has.
    const terminate = new AbortController();
    let grace: NodeJS.Timeout | undefined;
    const onAbort = () => {
      if (!started) return terminate.abort(signal.reason);
      port1.postMessage("abort");
      grace = setTimeout(() => {
        terminated.add(1, attrs);
        terminate.abort(signal.reason);
      }, abortGraceMs);
    };
    signal.addEventListener("abort", onAbort, { once: true });
    let reply: ThreadReply;
    try {
      reply = await poolOf().run({ call: sent, port: port2 }, { signal: terminate.signal, transferList });
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      const reason = lostReason(error, heapMb);
      lost.add(1, { ...attrs, reason: reason.label });
      log.warn({ err: error, stage: call.stage }, "a stage thread died during a stage");
      throw new StageThreadLost(`the ${call.stage} stage's thread died: ${reason.text}`, { cause: error });
    } finally {
      clearTimeout(grace);
      signal.removeEventListener("abort", onAbort);
      port1.close();
      if (started) busy.add(-1, attrs);
      else waiting.add(-1, attrs);
    }
    if (signal.aborted) throw signal.reason;
    if (reply.ok) return reply.value as PooledResult<C>;
    if ("stageError" in reply) {
      const { code, message, retryable } = reply.stageError;
      throw retryable ? new TransientStageError(code, message) : new PermanentStageError(code, message);
    }
    throw new Error(`the ${call.stage} stage failed in its thread: ${reply.detail}`);
  }

  return {
    run,
    destroy: async () => {
      await pool?.destroy();
    },
  };
}

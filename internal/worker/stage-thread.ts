/**
 * The body of a stage thread (see stage-pool.ts): runs one CPU-bound stage — detect, parse or
 * enrich — with the plain functions internal/stages exports, and answers with the stage's result
 * or its stage error as data: an Error's class and fields do not survive the copy between threads.
 */
import type { MessagePort } from "node:worker_threads";
// The three stages' own modules, not the stages' index: that also loads ingest's HTTP client
// (undici), which a stage thread never uses and which adds a good part of a thread's start.
import { detectStage, type DetectInput, type DetectResult } from "../stages/detect.ts";
import { enrichStage, type EnrichInput, type EnrichResult } from "../stages/enrich.ts";
import { findStageError, type StageErrorCode } from "../stages/errors.ts";
import type { DetectOptions, EnrichOptions, ParseOptions } from "../stages/options.ts";
import { parseStage, type ParseInput } from "../stages/parse.ts";
import type { ParsedDocument } from "../stages/parsed-document.ts";

/** A stage call the pool runs: the stage's plain input and options. */
export type PooledCall =
  | { stage: "detect"; input: DetectInput; options: DetectOptions }
  | { stage: "parse"; input: ParseInput; options: ParseOptions }
  | { stage: "enrich"; input: EnrichInput; options: EnrichOptions };

/** What a pooled call resolves with. */
export type PooledResult<C extends PooledCall> =
  C extends { stage: "detect" } ? DetectResult : C extends { stage: "parse" } ? ParsedDocument : EnrichResult;

export interface ThreadTask {
  call: PooledCall;
  /**
   * The task's own channel to the worker: the thread says "started" on it when the stage begins
   * (the stage's timeout counts from then, not from when the task was queued for a thread), and
   * any message from the worker aborts the stage's signal.
   */
  port: MessagePort;
}

export type ThreadReply =
  | { ok: true; value: unknown }
  | { ok: false; stageError: { code: StageErrorCode; message: string; retryable: boolean } }
  /** Not a stage error (a bug): `detail` is for the logs only. */
  | { ok: false; detail: string };

export const startedMessage = "started";

class AbortedByWorker extends Error {
  override name = "AbortedByWorker";
}

/** Runs a pooled call's stage function, wherever it is called (a stage thread, or the worker's own thread for a small input). */
export async function runPooledCall<C extends PooledCall>(call: C, signal: AbortSignal): Promise<PooledResult<C>> {
  const ctx = { signal };
  switch (call.stage) {
    case "detect":
      return (await detectStage(call.input, call.options, ctx)) as PooledResult<C>;
    case "parse":
      return (await parseStage(call.input, call.options, ctx)) as PooledResult<C>;
    case "enrich":
      return (await enrichStage(call.input, call.options, ctx)) as PooledResult<C>;
    default:
      throw new Error(`no stage ${(call as { stage: unknown }).stage} runs in a stage thread`);
  }
}

/** Piscina calls the default export once per task. */
export default async function runStageInThread({ call, port }: ThreadTask): Promise<ThreadReply> {
  const controller = new AbortController();
  port.on("message", () => controller.abort(new AbortedByWorker("the worker aborted the stage")));
  port.postMessage(startedMessage);
  try {
    return { ok: true, value: await runPooledCall(call, controller.signal) };
  } catch (error) {
    const stageError = findStageError(error);
    if (stageError) return { ok: false, stageError: { code: stageError.code, message: stageError.message, retryable: stageError.retryable } };
    return { ok: false, detail: error instanceof Error ? (error.stack ?? error.message) : String(error) };
  } finally {
    port.close();
  }
}

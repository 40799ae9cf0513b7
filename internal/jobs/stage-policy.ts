/**
 * How a job's stage is retried and timed: the defaults that proto/jobmesh/v1/pipelines.proto
 * documents for RetryPolicy and StageConfig.timeout, in one place, and the policy of a stage
 * with them filled in. The proto has no field presence for the numbers, so 0 reads as unset.
 */
import { durationMs } from "@bufbuild/protobuf/wkt";
import { configOf } from "./store.ts";

/** RetryPolicy's documented defaults (pipelines.proto). */
export const retryDefaults = Object.freeze({
  maxAttempts: 3,
  initialBackoffMs: 1_000,
  maxBackoffMs: 5 * 60_000,
  backoffMultiplier: 2,
  jitter: 0.2,
});

/** StageConfig.timeout's documented default (pipelines.proto). */
export const stageTimeoutDefaultMs = 60_000;

/**
 * How many times one stage of a job may lose its worker or thread (killed, stopped, its commit
 * failed) before the job fails; losses do not use the stage's max_attempts. The default of
 * JOBMESH_MAX_STAGE_LOSSES, kept with the bus topology that every process shares.
 */
export { maxStageLossesDefault } from "../bus/topology.ts";

/** A stage's retry policy with every default filled in. */
export interface StageRetryPolicy {
  maxAttempts: number;
  initialMs: number;
  maxMs: number;
  multiplier: number;
  jitter: number;
}

type ConfigSource = Parameters<typeof configOf>[0];

/** The retry policy of a job's stage (by index in its pipeline), with defaults for unset fields. */
export function retryPolicyOf(row: ConfigSource, stageIndex: number): StageRetryPolicy {
  const retry = configOf(row).stages[stageIndex]?.retry;
  return {
    maxAttempts: retry?.maxAttempts || retryDefaults.maxAttempts,
    initialMs: retry?.initialBackoff ? durationMs(retry.initialBackoff) : retryDefaults.initialBackoffMs,
    maxMs: retry?.maxBackoff ? durationMs(retry.maxBackoff) : retryDefaults.maxBackoffMs,
    multiplier: retry?.backoffMultiplier || retryDefaults.backoffMultiplier,
    jitter: retry?.jitter || retryDefaults.jitter,
  };
}

/** Exponential backoff with jitter before retry number `retry` (1 = the first retry). */
export function backoffMs(policy: StageRetryPolicy, retry: number, random = Math.random): number {
  const base = Math.min(policy.maxMs, policy.initialMs * policy.multiplier ** (retry - 1));
  const spread = base * policy.jitter;
  return Math.max(0, Math.round(base - spread + random() * 2 * spread));
}

/** The timeout of one attempt of a job's stage, in milliseconds. */
export function stageTimeoutMs(row: ConfigSource, stageIndex: number): number {
  const timeout = configOf(row).stages[stageIndex]?.timeout;
  return timeout ? durationMs(timeout) : stageTimeoutDefaultMs;
}

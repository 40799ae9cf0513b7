import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { type PipelineConfig, PipelineConfigSchema, Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import { retryDefaults, stageTimeoutDefaultMs } from "../jobs/stage-policy.ts";

export const documentDefaultId = "document-default";

// Shorter backoffs than RetryPolicy's defaults; the rest as the defaults.
const retry = (maxAttempts: number) => ({
  maxAttempts,
  initialBackoff: durationFromMs(500),
  maxBackoff: durationFromMs(30_000),
  backoffMultiplier: retryDefaults.backoffMultiplier,
  jitter: retryDefaults.jitter,
});

/** The built-in pipeline every tenant has: all five stages with sane retries and timeouts. */
export function documentDefaultConfig(): PipelineConfig {
  return create(PipelineConfigSchema, {
    stages: [
      { stage: Stage.INGEST, retry: retry(4), timeout: durationFromMs(stageTimeoutDefaultMs), options: { options: { case: "ingest", value: { maxBytes: 50n * 1024n * 1024n, fetchTimeout: durationFromMs(30_000) } } } },
      { stage: Stage.DETECT, retry: retry(3), timeout: durationFromMs(10_000) },
      { stage: Stage.PARSE, retry: retry(2), timeout: durationFromMs(120_000) },
      { stage: Stage.ENRICH, retry: retry(2), timeout: durationFromMs(stageTimeoutDefaultMs), options: { options: { case: "enrich", value: { keywordCount: 10, summarySentences: 3, detectPii: true } } } },
      { stage: Stage.OUTPUT, retry: retry(4), timeout: durationFromMs(30_000), options: { options: { case: "output", value: { includeText: true } } } },
    ],
  });
}

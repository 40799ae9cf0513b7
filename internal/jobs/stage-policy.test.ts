// The defaults a stage runs with are the ones pipelines.proto promises: each is read here from
// the comment above its field, so changing either one without the other fails.
import t from "tap";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { create, toJson, type MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { PipelineConfigSchema, Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import { loadConfig } from "../config/index.ts";
import { createTopology } from "../bus/topology.ts";
import { maxStageLossesDefault, retryDefaults, retryPolicyOf, stageTimeoutDefaultMs, stageTimeoutMs } from "./stage-policy.ts";

const proto = readFileSync(join(import.meta.dirname, "../../proto/jobmesh/v1/pipelines.proto"), "utf8");

/** The "Default X." in the comment lines right above `field` in `message`. */
function documentedDefault(message: string, field: string): string {
  const body = new RegExp(`message ${message} \\{([\\s\\S]*?)\\n\\}`).exec(proto)?.[1];
  if (!body) throw new Error(`message ${message} not found in pipelines.proto`);
  const lines = body.split("\n");
  const at = lines.findIndex((l) => new RegExp(`^\\s*[\\w.]+ ${field} = \\d+`).test(l));
  if (at < 0) throw new Error(`field ${field} not found in ${message}`);
  const comment: string[] = [];
  for (let i = at - 1; i >= 0 && /^\s*\/\//.test(lines[i]); i--) comment.unshift(lines[i].replace(/^\s*\/\/\s?/, ""));
  const found = /Default ([^;.]+(?:\.\d+)?)/.exec(comment.join(" "))?.[1];
  if (!found) throw new Error(`no "Default" in the comment of ${message}.${field}`);
  return found.trim();
}

/** "1s" → 1000, "5m" → 300000, "60s" → 60000. */
function durationText(text: string): number {
  const m = /^(\d+)(ms|s|m|h)$/.exec(text);
  if (!m) throw new Error(`not a duration: ${text}`);
  return Number(m[1]) * { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[m[2] as "ms" | "s" | "m" | "h"];
}

void t.test("defaults - each one is what pipelines.proto documents", async (t) => {
  t.equal(retryDefaults.maxAttempts, Number(documentedDefault("RetryPolicy", "max_attempts")), "max_attempts");
  t.equal(retryDefaults.initialBackoffMs, durationText(documentedDefault("RetryPolicy", "initial_backoff")), "initial_backoff");
  t.equal(retryDefaults.maxBackoffMs, durationText(documentedDefault("RetryPolicy", "max_backoff")), "max_backoff");
  t.equal(retryDefaults.backoffMultiplier, Number(documentedDefault("RetryPolicy", "backoff_multiplier")), "backoff_multiplier");
  t.equal(retryDefaults.jitter, Number(documentedDefault("RetryPolicy", "jitter")), "jitter");
  t.equal(stageTimeoutDefaultMs, durationText(documentedDefault("StageConfig", "timeout")), "StageConfig.timeout");
  // And the values themselves, so the parsing above cannot pass by reading nothing.
  t.same({ ...retryDefaults }, { maxAttempts: 3, initialBackoffMs: 1_000, maxBackoffMs: 300_000, backoffMultiplier: 2, jitter: 0.2 });
  t.equal(stageTimeoutDefaultMs, 60_000);
});

/** A job row's pipeline_config as stored (JSON), with the given stages. */
const rowWith = (stages: MessageInitShape<typeof PipelineConfigSchema>["stages"]) => ({
  pipeline_config: toJson(PipelineConfigSchema, create(PipelineConfigSchema, { stages })),
});

void t.test("a stage without a retry policy or timeout - runs with the documented defaults", async (t) => {
  const row = rowWith([{ stage: Stage.INGEST }, { stage: Stage.OUTPUT }]);
  t.same(retryPolicyOf(row, 0), { maxAttempts: 3, initialMs: 1_000, maxMs: 300_000, multiplier: 2, jitter: 0.2 });
  t.equal(stageTimeoutMs(row, 1), 60_000);
});

void t.test("a retry policy that sets some fields - the others take their defaults (0 reads as unset)", async (t) => {
  const row = rowWith([
    { stage: Stage.INGEST, retry: { maxAttempts: 5 }, timeout: durationFromMs(2_000) },
    { stage: Stage.OUTPUT, retry: { initialBackoff: durationFromMs(50), maxBackoff: durationFromMs(200), backoffMultiplier: 3, jitter: 0.5, maxAttempts: 0 } },
  ]);
  t.same(retryPolicyOf(row, 0), { maxAttempts: 5, initialMs: 1_000, maxMs: 300_000, multiplier: 2, jitter: 0.2 });
  t.same(retryPolicyOf(row, 1), { maxAttempts: 3, initialMs: 50, maxMs: 200, multiplier: 3, jitter: 0.5 });
  t.equal(stageTimeoutMs(row, 0), 2_000);
});

void t.test("JOBMESH_MAX_STAGE_LOSSES - defaults to 3, is read from the environment and reaches the topology", async (t) => {
  t.equal(maxStageLossesDefault, 3);
  t.equal(loadConfig({}).maxStageLosses, 3);
  t.equal(loadConfig({ JOBMESH_MAX_STAGE_LOSSES: "7" }).maxStageLosses, 7);
  t.throws(() => loadConfig({ JOBMESH_MAX_STAGE_LOSSES: "0" }), /JOBMESH_MAX_STAGE_LOSSES/);
  t.equal(createTopology("ns").maxStageLosses, 3);
  t.equal(createTopology("ns", { maxStageLosses: 5 }).maxStageLosses, 5);
});

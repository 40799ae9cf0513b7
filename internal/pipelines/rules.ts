/**
 * The rules of a pipeline configuration that protovalidate annotations cannot express, because
 * they relate stages to each other: order, uniqueness, ingest first, output last, options that
 * belong to their stage, and sane retry bounds.
 */
import { create } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import type { Validator } from "@bufbuild/protovalidate";
import { type PipelineConfig, PipelineConfigSchema, PipelineViolationSchema, Stage, type PipelineViolation } from "../../gen/jobmesh/v1/pipelines_pb.js";
import { pathToString } from "@bufbuild/protobuf/reflect";

const stageName = (stage: Stage) => (Stage[stage] ?? String(stage)).replace(/^STAGE_/, "").toLowerCase();

/** The options case each stage takes. */
const optionsCaseOf: Partial<Record<Stage, string>> = {
  [Stage.INGEST]: "ingest",
  [Stage.DETECT]: "detect",
  [Stage.PARSE]: "parse",
  [Stage.ENRICH]: "enrich",
  [Stage.OUTPUT]: "output",
};

/** Stages that need an earlier one to have produced their input. */
const requires: Partial<Record<Stage, Stage>> = {
  [Stage.PARSE]: Stage.DETECT,
  [Stage.ENRICH]: Stage.PARSE,
};

function violation(field: string, rule: string, message: string): PipelineViolation {
  return create(PipelineViolationSchema, { field, rule, message });
}

/** Violations of the cross-stage rules; `prefix` is the config's path in the request. */
export function stageRuleViolations(config: PipelineConfig, prefix: string): PipelineViolation[] {
  const out: PipelineViolation[] = [];
  const stages = config.stages;
  const at = (i: number, field = "") => `${prefix}.stages[${i}]${field}`;
  if (stages.length === 0) return [violation(`${prefix}.stages`, "stages.required", "a pipeline needs at least the ingest and output stages")];
  if (stages[0].stage !== Stage.INGEST) out.push(violation(at(0, ".stage"), "stages.ingest_first", "the first stage must be ingest"));
  const last = stages.length - 1;
  if (stages[last].stage !== Stage.OUTPUT) out.push(violation(at(last, ".stage"), "stages.output_last", "the last stage must be output"));
  const seen = new Set<Stage>();
  stages.forEach((s, i) => {
    if (seen.has(s.stage)) out.push(violation(at(i, ".stage"), "stages.unique", `stage ${stageName(s.stage)} appears more than once`));
    else if (i > 0 && s.stage < stages[i - 1].stage) {
      out.push(violation(at(i, ".stage"), "stages.order", `stage ${stageName(s.stage)} must come before ${stageName(stages[i - 1].stage)} (order: ingest, detect, parse, enrich, output)`));
    }
    seen.add(s.stage);
    const needed = requires[s.stage];
    if (needed !== undefined && !stages.slice(0, i).some((p) => p.stage === needed)) {
      out.push(violation(at(i, ".stage"), "stages.requires", `stage ${stageName(s.stage)} needs ${stageName(needed)} before it`));
    }
    const optionsCase = s.options?.options.case;
    if (optionsCase !== undefined && optionsCase !== optionsCaseOf[s.stage]) {
      out.push(violation(at(i, ".options"), "stages.options_match", `stage ${stageName(s.stage)} cannot take ${optionsCase} options`));
    }
    const retry = s.retry;
    if (retry?.initialBackoff && retry.maxBackoff && durationMs(retry.initialBackoff) > durationMs(retry.maxBackoff)) {
      out.push(violation(at(i, ".retry.initial_backoff"), "retry.backoff_order", "initial_backoff must not exceed max_backoff"));
    }
  });
  return out;
}

/** Every violation of a configuration: its field constraints and the cross-stage rules. */
export function allViolations(validator: Validator, config: PipelineConfig, prefix: string): PipelineViolation[] {
  const result = validator.validate(PipelineConfigSchema, config);
  const fieldViolations =
    result.kind === "invalid"
      ? result.error.violations.map((v) => violation(`${prefix}.${pathToString(v.field)}`, v.ruleId, v.message))
      : [];
  if (result.kind === "error") throw result.error;
  return [...fieldViolations, ...stageRuleViolations(config, prefix)];
}

import t from "tap";
import { create, toJson } from "@bufbuild/protobuf";
import { JobEventType, JobState } from "../../gen/jobmesh/v1/events_pb.js";
import { StageAttemptOutcome } from "../../gen/jobmesh/v1/jobs_pb.js";
import { PipelineConfigSchema, Stage } from "../../gen/jobmesh/v1/pipelines_pb.js";
import { failureStep, nextStageOf, successStep, type StageFailure } from "./state-machine.ts";
import type { JobRow } from "./store.ts";

// [ingest, output], ingest allowed 2 attempts with no backoff to speak of.
const config = create(PipelineConfigSchema, {
  stages: [{ stage: Stage.INGEST, retry: { maxAttempts: 2, initialBackoff: { seconds: 0n, nanos: 1_000_000 } } }, { stage: Stage.OUTPUT }],
});
const row = { pipeline_config: toJson(PipelineConfigSchema, config), stage_attempt_base: 1 } as unknown as JobRow;
const types = (events: { type: JobEventType }[]) => events.map((e) => JobEventType[e.type]);

void t.test("success - queue the next stage, continue it here, or end the job", async (t) => {
  const next = nextStageOf(row, 0, 0);
  t.same(next, { stageIndex: 1, attempt: 1 });
  t.same(nextStageOf(row, 0, 2), { stageIndex: 1, attempt: 3 }, "after RetryJob the next stage's attempts continue");
  t.equal(nextStageOf(row, 1, 0), undefined, "none after the last stage");

  const queued = successStep(next, 0, 1, false);
  t.same([JobState[queued.state], types(queued.events), queued.task], ["QUEUED", ["STAGE_SUCCEEDED"], { stageIndex: 1, attempt: 1 }]);
  const continued = successStep(next, 0, 1, true);
  t.same([JobState[continued.state], types(continued.events), continued.task], ["RUNNING", ["STAGE_SUCCEEDED", "STAGE_STARTED"], undefined]);
  t.same(continued.events[1], { type: JobEventType.STAGE_STARTED, stageIndex: 1, attempt: 1 });
  const last = successStep(undefined, 1, 1, true);
  t.same([JobState[last.state], types(last.events), last.task], ["SUCCEEDED", ["STAGE_SUCCEEDED", "JOB_SUCCEEDED"], undefined]);
});

void t.test("failure - retried while attempts remain, then FAILED; permanent fails at once", async (t) => {
  const transient: StageFailure = { kind: "transient", outcome: StageAttemptOutcome.FAILED, code: "FETCH_FAILED", message: "503" };
  const first = failureStep(row, 0, 1, transient, 0, 3);
  t.same([JobState[first.state], types(first.events), first.task?.attempt, first.retried, first.error.transient], ["QUEUED", ["STAGE_FAILED"], 2, true, true]);
  const second = failureStep(row, 0, 2, transient, 0, 3);
  t.same([JobState[second.state], types(second.events), second.task, second.retried], ["FAILED", ["STAGE_FAILED", "JOB_FAILED"], undefined, false]);
  const permanent = failureStep(row, 0, 1, { ...transient, kind: "permanent", code: "CORRUPT_DOCUMENT" }, 0, 3);
  t.equal(JobState[permanent.state], "FAILED");
  t.equal(permanent.error.code, "CORRUPT_DOCUMENT");
});

void t.test("failure - a loss uses no attempt: requeued until the stage has lost maxStageLosses, then FAILED saying so", async (t) => {
  const lost: StageFailure = { kind: "lost", outcome: StageAttemptOutcome.ABANDONED, code: "WORKER_LOST", message: "heartbeat lapsed" };
  // Attempts 1 and 2 lost: the stage's own 2 attempts are untouched.
  const again = failureStep(row, 0, 2, lost, 1, 3);
  t.same([JobState[again.state], again.outcome, again.lost, again.task?.attempt], ["QUEUED", StageAttemptOutcome.ABANDONED, true, 3]);
  const ended = failureStep(row, 0, 3, lost, 2, 3);
  t.equal(JobState[ended.state], "FAILED");
  t.equal(ended.error.message, "the stage's worker was lost 3 times; last: heartbeat lapsed");
});

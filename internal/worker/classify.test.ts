import t from "tap";
import { StageAttemptOutcome } from "../../gen/jobmesh/v1/jobs_pb.js";
import { PermanentStageError, TransientStageError } from "../stages/index.ts";
import { StageThreadLost } from "./stage-pool.ts";
import { classify } from "./worker.ts";

const live = new AbortController().signal;

void t.test("classify - stage errors decide retry versus fail; anything else is retried", async (t) => {
  t.match(classify(new PermanentStageError("unsupported_media_type", "no"), live), { kind: "permanent", code: "UNSUPPORTED_MEDIA_TYPE", outcome: StageAttemptOutcome.FAILED });
  t.match(classify(new TransientStageError("fetch_failed", "503"), live), { kind: "transient", code: "FETCH_FAILED" });
  t.match(classify(new Error("wrapped", { cause: new PermanentStageError("corrupt_document", "bad") }), live), { kind: "permanent", code: "CORRUPT_DOCUMENT" });
  t.match(classify(new TypeError("bug"), live), { kind: "transient", code: "INTERNAL" });
  t.notMatch(classify(new TypeError("secret detail"), live).message, /secret/, "internal detail stays out of the message");
});

void t.test("classify - a stage's thread that died is a loss, not the stage's failure", async (t) => {
  const lost = new StageThreadLost("the parse stage's thread died: it exceeded its heap limit of 512 MiB");
  t.same(classify(lost, live), { kind: "lost", outcome: StageAttemptOutcome.ABANDONED, code: "STAGE_CRASHED", message: lost.message });
});

import t from "tap";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { JobEventSchema, JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
import { matchesEvent, type SubscriptionMatch } from "./fanout.ts";

const sub = (over: Partial<SubscriptionMatch> = {}): SubscriptionMatch => ({ id: "w", tenantId: "t", eventTypes: [], filterPipeline: "", filterJobLabels: {}, createTimeMs: 1000, ...over });
const event = create(JobEventSchema, { eventId: "e", type: JobEventType.JOB_SUCCEEDED, pipeline: "pipelines/a", labels: { team: "x", env: "prod" }, eventTime: timestampFromMs(2000) });

void t.test("matching - type, pipeline, every label, and not older than the subscription", async (t) => {
  t.ok(matchesEvent(sub(), event), "no filter: every event");
  t.ok(matchesEvent(sub({ eventTypes: [JobEventType.JOB_FAILED, JobEventType.JOB_SUCCEEDED] }), event));
  t.notOk(matchesEvent(sub({ eventTypes: [JobEventType.JOB_FAILED] }), event));
  t.ok(matchesEvent(sub({ filterPipeline: "pipelines/a" }), event));
  t.notOk(matchesEvent(sub({ filterPipeline: "pipelines/b" }), event));
  t.ok(matchesEvent(sub({ filterJobLabels: { team: "x" } }), event));
  t.ok(matchesEvent(sub({ filterJobLabels: { team: "x", env: "prod" } }), event));
  t.notOk(matchesEvent(sub({ filterJobLabels: { team: "x", env: "dev" } }), event));
  t.notOk(matchesEvent(sub({ filterJobLabels: { owner: "x" } }), event));
  t.ok(matchesEvent(sub({ createTimeMs: 2000 }), event), "created at the event's time: delivered");
  t.notOk(matchesEvent(sub({ createTimeMs: 2001 }), event), "an event from before the subscription: not delivered");
});

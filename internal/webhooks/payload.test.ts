import t from "tap";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { JobEventSchema, JobEventType, JobState } from "../../gen/jobmesh/v1/events_pb.js";
import { deliveryBody, testPingBody } from "./payload.ts";

const eventTime = new Date("2026-12-07T22:00:00.123Z");
const event = (type: JobEventType) =>
  create(JobEventSchema, { eventId: "e1", type, tenant: "t1", job: "jobs/j1", pipeline: "pipelines/p", state: JobState.SUCCEEDED, eventTime: timestampFromDate(eventTime), sequence: 3n, labels: { team: "a" } });

void t.test("payload - type token, RFC 3339 timestamp, the JobEvent in proto3 JSON, and the result link on job_succeeded", async (t) => {
  const body = JSON.parse(deliveryBody(event(JobEventType.JOB_SUCCEEDED), "https://jobs.example.com/"));
  t.equal(body.type, "job_succeeded");
  t.equal(body.timestamp, "2026-12-07T22:00:00.123Z");
  t.equal(body.data.eventId, "e1");
  t.equal(body.data.job, "jobs/j1");
  t.equal(body.data.type, "JOB_EVENT_TYPE_JOB_SUCCEEDED");
  t.equal(body.data.sequence, "3", "int64 as a string, as proto3 JSON says");
  t.same(body.data.labels, { team: "a" });
  t.equal(body.data.resultUrl, "https://jobs.example.com/v1/jobs/j1/result");
});

void t.test("payload - no result link on other events; a ping has its own type", async (t) => {
  const body = JSON.parse(deliveryBody(event(JobEventType.JOB_FAILED), "https://x"));
  t.equal(body.type, "job_failed");
  t.notOk("resultUrl" in body.data);
  const ping = JSON.parse(testPingBody("webhooks/w1"));
  t.equal(ping.type, "webhook.test");
  t.same(ping.data, { webhook: "webhooks/w1" });
});

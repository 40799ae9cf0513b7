/**
 * The body of a delivery, as the Standard Webhooks spec shapes it: `{"type", "timestamp",
 * "data"}`. `type` is the event's subject token ("job_succeeded"), `timestamp` the event's time
 * (RFC 3339), `data` the JobEvent in proto3 JSON (so receivers can decode it with the published
 * contract) plus `resultUrl`, the gateway's link to the result, on job_succeeded.
 */
import { toJson, type JsonObject } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { JobEventSchema, JobEventType, type JobEvent } from "../../gen/jobmesh/v1/events_pb.js";
import { eventTypeToken } from "../bus/topology.ts";

/** The type of TestWebhook's ping. */
export const testEventType = "webhook.test";

/** The result link of a job: `${publicUrl}/v1/jobs/<id>/result` (GetJobResult over REST). */
export function resultUrlOf(publicUrl: string, job: string): string {
  return `${publicUrl.replace(/\/+$/, "")}/v1/${job}/result`;
}

/** The JSON body delivered for one event. */
export function deliveryBody(event: JobEvent, publicUrl: string): string {
  const data = toJson(JobEventSchema, event) as JsonObject;
  if (event.type === JobEventType.JOB_SUCCEEDED && event.job) data.resultUrl = resultUrlOf(publicUrl, event.job);
  const time = event.eventTime ? timestampDate(event.eventTime) : new Date();
  return JSON.stringify({ type: eventTypeToken(event.type), timestamp: time.toISOString(), data });
}

/** The body of a test ping: no event behind it, only the subscription it was sent for. */
export function testPingBody(webhookName: string, now: Date = new Date()): string {
  return JSON.stringify({ type: testEventType, timestamp: now.toISOString(), data: { webhook: webhookName } });
}

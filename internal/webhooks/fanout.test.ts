import t from "tap";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { JobEventSchema, JobEventType } from "../../gen/jobmesh/v1/events_pb.js";
import { createSubscriptionCache, matchesEvent, type SubscriptionMatch } from "./fanout.ts";

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

void t.test("cache - an invalidation that arrives while a load runs keeps that load out of the cache", async (t) => {
  const tenant = "00000000-0000-4000-8000-000000000001";
  let version = 1;
  let loads = 0;
  let during: (() => void) | undefined;
  const cache = createSubscriptionCache(async (tenants) => {
    loads++;
    const snapshot = version; // the SELECT's snapshot is taken here
    during?.();
    return new Map(tenants.map((id) => [id, [sub({ id: `w${snapshot}`, tenantId: id })]]));
  }, async () => true);

  // A subscription commits (version 2) and its notification is applied while the load runs.
  during = () => {
    version = 2;
    cache.invalidate(tenant);
  };
  t.same((await cache.get([tenant])).get(tenant)!.map((s) => s.id), ["w1"], "this batch used the snapshot it read");
  during = undefined;
  t.same((await cache.get([tenant])).get(tenant)!.map((s) => s.id), ["w2"], "the next batch loads again: the stale snapshot was not cached");
  t.equal(loads, 2);
  t.same((await cache.get([tenant])).get(tenant)!.map((s) => s.id), ["w2"], "an undisturbed load is cached");
  t.equal(loads, 2);

  // The same with an invalidation of every tenant (the LISTEN connection was lost).
  cache.invalidate(tenant);
  during = () => {
    version = 3;
    cache.invalidate();
  };
  await cache.get([tenant]);
  during = undefined;
  t.same((await cache.get([tenant])).get(tenant)!.map((s) => s.id), ["w3"]);
});

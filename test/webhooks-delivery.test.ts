// Webhook delivery against real Postgres, NATS and local receivers that verify every request
// with the standardwebhooks library: the happy path, retries (schedule shortened by config),
// Retry-After, 410, an outage of the receiver, days of failure, a receiver that never answers,
// and a secret rotation.
import t from "tap";
import { JobEventType, type JobEvent } from "../gen/jobmesh/v1/events_pb.js";
import { WebhookAttemptOutcome, WebhookDisabledReason } from "../gen/jobmesh/v1/webhooks_pb.js";
import { randomUUID } from "node:crypto";
import { claimDue, insertDeliveries, type ClaimedRow, type ClaimLimits, type NewDeliveries } from "../internal/webhooks/claim.ts";
import { replayDelivery } from "../internal/webhooks/delivery-log.ts";
import { recordFailure, recordSuccesses } from "../internal/webhooks/outcomes.ts";
import { generateWebhookSecret } from "../internal/webhooks/secrets.ts";
import { createDeliveryWorld } from "./support/webhooks-delivery.ts";
import { until, waitFor } from "./support/wait.ts";

t.setTimeout(300_000);
const world = await createDeliveryWorld(t);
const { db } = world;

async function attemptsOf(webhookId: string, eventId: string) {
  const { rows } = await db.query<{ attempt: number; outcome: number; status_code: number; attempt_time: Date; response_excerpt: string; error_message: string }>(
    `SELECT a.attempt, a.outcome, a.status_code, a.attempt_time, a.response_excerpt, a.error_message
     FROM webhook_delivery_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
     WHERE d.tenant_id = $1 AND d.webhook_id = $2 AND d.event_id = $3 ORDER BY a.attempt`,
    [world.tenantId, webhookId, eventId],
  );
  return rows;
}

async function deliveryOf(webhookId: string, eventId: string) {
  const { rows } = await db.query<{ status: number; attempt_count: number; lease_until: Date | null }>(
    "SELECT status, attempt_count, lease_until FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 AND event_id = $3",
    [world.tenantId, webhookId, eventId],
  );
  return rows[0];
}

/** The limits of a process with nothing of its own in flight: what its claim or hot-path insert may take. */
const freshProcess = (budget = 100): ClaimLimits => ({ budget, maxInFlight: 256, leaseMs: 60_000, localBySubscription: new Map(), localByTenant: new Map() });

/** Deliveries of the events `eventIds` to one subscription, as the fan-out hands them to insertDeliveries. */
function deliveriesTo(webhookId: string, eventIds: string[]): NewDeliveries {
  return {
    tenant: eventIds.map(() => world.tenantId), webhook: eventIds.map(() => webhookId), eventId: eventIds,
    type: eventIds.map(() => 1), job: eventIds.map(() => "jobs/x"), event: eventIds.map(() => Buffer.from("")),
  };
}

async function webhookOf(id: string) {
  const { rows } = await db.query<{ state: number; disabled_reason: number; failing_since: Date | null }>("SELECT state, disabled_reason, failing_since FROM webhooks WHERE tenant_id = $1 AND id = $2", [world.tenantId, id]);
  return rows[0];
}

void t.test("delivery - job_succeeded reaches the receiver signed (standardwebhooks verifies), with the result link; filters hold", async (t) => {
  let secret = "";
  const receiver = await world.receiver(() => [secret]);
  const hook = await world.subscribe(receiver.url);
  secret = hook.secret;
  const other = await world.receiver(() => []);
  await world.subscribe(other.url, { eventTypes: [JobEventType.JOB_FAILED], filterPipeline: "pipelines/document-default" });
  const labelled = await world.receiver(() => []);
  await world.subscribe(labelled.url, { filterJobLabels: { team: "blue" } });
  await world.start({});

  const event = await world.publish({ labels: { team: "red" } });
  await until(t, "the delivery succeeded", async () => (await deliveryOf(hook.id, event.eventId))?.status === 2);
  t.equal(receiver.countOf(event.eventId), 1);
  const arrival = receiver.arrivals[0];
  t.ok(arrival.verified, "the standardwebhooks library verified the signature");
  t.equal(arrival.headers["webhook-id"], event.eventId, "webhook-id is the event id");
  t.equal(arrival.body.type, "job_succeeded");
  t.equal(arrival.body.data.job, event.job, "the job's name");
  t.equal(arrival.body.data.resultUrl, `https://jobmesh.example.com/v1/${event.job}/result`);
  const attempts = await attemptsOf(hook.id, event.eventId);
  t.same(attempts.map((a) => [a.attempt, a.outcome, a.status_code, a.response_excerpt]), [[1, WebhookAttemptOutcome.SUCCEEDED, 200, "ok"]]);
  t.equal((await deliveryOf(hook.id, event.eventId)).lease_until, null, "the lease is released");

  // The same event again (a redelivery from the stream): no second delivery row.
  const failed = await world.publish({ type: JobEventType.JOB_FAILED, labels: { team: "blue" } });
  await until(t, "the job_failed event reached the type-filtered subscription", () => other.countOf(failed.eventId) === 1);
  await until(t, "and the label-filtered one", () => labelled.countOf(failed.eventId) === 1);
  t.equal(other.countOf(event.eventId), 0, "the type filter kept job_succeeded away");
  t.equal(labelled.countOf(event.eventId), 0, "the label filter kept team=red away");
  await until(t, "job_failed delivered to the unfiltered subscription", () => receiver.countOf(failed.eventId) === 1);
  await world.reset();
});

void t.test("delivery - a receiver that fails 3 times then succeeds gets the event, delivered after 4 attempts", async (t) => {
  let secret = "";
  const receiver = await world.receiver(() => [secret]);
  const hook = await world.subscribe(receiver.url);
  secret = hook.secret;
  receiver.answer = (_a, res) => {
    res.statusCode = receiver.arrivals.length <= 3 ? 500 : 204;
    res.end(receiver.arrivals.length <= 3 ? "not yet" : "");
  };
  await world.start({ retryScheduleMs: [0, 100, 100, 100, 100] });
  const event = await world.publish();
  await until(t, "delivered", async () => (await deliveryOf(hook.id, event.eventId))?.status === 2);
  t.equal((await deliveryOf(hook.id, event.eventId)).attempt_count, 4);
  const attempts = await attemptsOf(hook.id, event.eventId);
  t.same(attempts.map((a) => [a.attempt, a.outcome, a.status_code]), [
    [1, WebhookAttemptOutcome.HTTP_ERROR, 500], [2, WebhookAttemptOutcome.HTTP_ERROR, 500], [3, WebhookAttemptOutcome.HTTP_ERROR, 500], [4, WebhookAttemptOutcome.SUCCEEDED, 204],
  ]);
  t.equal(attempts[0].response_excerpt, "not yet");
  t.equal(attempts[0].error_message, "HTTP 500");
  t.equal(receiver.countOf(event.eventId), 4);
  t.ok(receiver.arrivals.every((a) => a.verified), "every attempt signed");
  t.equal((await webhookOf(hook.id)).failing_since, null, "healthy again after the success");
  await world.reset();
});

void t.test("delivery - Retry-After is honoured instead of the (short) schedule", async (t) => {
  const receiver = await world.receiver(() => []);
  const hook = await world.subscribe(receiver.url);
  // The delay the failure stored, read when the second attempt arrives (the claim leaves
  // next_attempt_time as the failure set it): no clock of this test is involved.
  let storedDelayMs: number | undefined;
  receiver.answer = (_a, res) => {
    if (receiver.arrivals.length === 1) {
      res.writeHead(503, { "retry-after": "2" });
      res.end();
    } else void (async () => {
      const { rows } = await db.query<{ ms: number }>(
        "SELECT (extract(epoch FROM next_attempt_time - update_time) * 1000)::float8 AS ms FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2",
        [world.tenantId, hook.id],
      );
      storedDelayMs ??= rows[0].ms;
      res.end("ok");
    })();
  };
  await world.start({ retryScheduleMs: [0, 50, 50] });
  const event = await world.publish();
  await until(t, "delivered", async () => (await deliveryOf(hook.id, event.eventId))?.status === 2);
  t.ok(storedDelayMs !== undefined && storedDelayMs >= 2_000 && storedDelayMs < 2_001, `the retry was stored ${storedDelayMs} ms after the failure (Retry-After: 2 s, schedule: 50 ms)`);
  const attempts = await attemptsOf(hook.id, event.eventId);
  t.same(attempts.map((a) => a.status_code), [503, 200]);
  await world.reset();
});

void t.test("delivery - 410 Gone disables the subscription and fails its pending deliveries", async (t) => {
  const receiver = await world.receiver(() => []);
  const hook = await world.subscribe(receiver.url, { maxConcurrency: 1 });
  // The answer waits until every event has its delivery row: a later event fanned out after the
  // disable would (rightly) get none.
  const rows = async () => (await db.query<{ n: number }>("SELECT count(*)::int AS n FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2", [world.tenantId, hook.id])).rows[0].n;
  receiver.answer = (_a, res) => void (async () => {
    while ((await rows()) < 3) await new Promise((resolve) => setTimeout(resolve, 20));
    res.statusCode = 410;
    res.end("gone");
  })();
  // Created before the engine starts: its dispatcher freezes the allowed hosts.
  const control = await world.receiver(() => []);
  await world.start({});
  const events = [await world.publish(), await world.publish(), await world.publish()];
  await until(t, "disabled", async () => (await webhookOf(hook.id)).state === 2);
  t.equal((await webhookOf(hook.id)).disabled_reason, WebhookDisabledReason.ENDPOINT_GONE);
  await until(t, "every delivery FAILED", async () => (await world.statusCounts(hook.id)).failed === events.length);
  t.equal(receiver.arrivals.length, 1, "one request only: the rest were never sent");
  // Recorded just after the disabling transaction commits: waited for, not raced.
  const audit = await waitFor(t, "the audit event of the disable", () => world.audit.find((e) => e.resource === `webhooks/${hook.id}`));
  t.equal(audit?.action, "jobmesh.v1.WebhookService.DisableWebhook");
  t.equal(audit?.actor?.subject, "system/webhooks");
  // Later events are not fanned out to it at all.
  const later = await world.publish();
  await world.subscribe(control.url);
  const marker = await world.publish();
  await until(t, "a later event reached an active subscription", () => control.countOf(marker.eventId) === 1);
  t.equal(receiver.countOf(later.eventId), 0);
  await world.reset();
});

void t.test("delivery - a subscription disabled or deleted behind the fan-out's cache gets no rows and fails no batch", async (t) => {
  const receiver = await world.receiver(() => []);
  const hook = await world.subscribe(receiver.url);
  const goneReceiver = await world.receiver(() => []);
  const disabled = await world.subscribe(goneReceiver.url);
  const deleted = await world.subscribe(goneReceiver.url);
  await world.start({});
  const first = await world.publish();
  await until(t, "the cache is loaded (every subscription got the first event)", () => receiver.countOf(first.eventId) === 1 && goneReceiver.countOf(first.eventId) === 2);
  // No webhooks_changed: the fan-out's cache still holds both, as while a notification is in flight.
  await db.query("UPDATE webhooks SET state = 2 WHERE id = $1", [disabled.id]);
  const later = await world.publish();
  await until(t, "the active subscription got the later event", async () => (await deliveryOf(hook.id, later.eventId)) !== undefined);
  t.equal(await deliveryOf(disabled.id, later.eventId), undefined, "no delivery row for the disabled subscription (same statement as the active one's)");
  // A deleted one (still cached) must not fail the batch: the active subscription still gets its rows.
  await db.query("DELETE FROM webhooks WHERE id = $1", [deleted.id]);
  const last = await world.publish();
  await until(t, "the active subscription got the event after the delete", () => receiver.countOf(last.eventId) === 1);
  t.equal(goneReceiver.countOf(last.eventId), 0, "nothing for the deleted subscription");
  await world.reset();
});

void t.test("delivery - a secret that cannot be unsealed fails its attempt (recorded), and the round's other deliveries are sent", async (t) => {
  const receiver = await world.receiver(() => []);
  const hook = await world.subscribe(receiver.url);
  const broken = await world.subscribe(receiver.url);
  await db.query("UPDATE webhooks SET secret_sealed = '\\x00'::bytea WHERE id = $1", [broken.id]);
  await world.start({});
  const event = await world.publish();
  await until(t, "the other subscription's delivery succeeded", async () => (await deliveryOf(hook.id, event.eventId))?.status === 2);
  const attempts = await waitFor(t, "the broken subscription's failed attempt", async () => {
    const found = await attemptsOf(broken.id, event.eventId);
    return found.length > 0 && found;
  });
  t.match(attempts[0].error_message, /secret cannot be unsealed/);
  t.equal(receiver.countOf(event.eventId), 1, "only the healthy subscription's request was sent");
  await world.reset();
});

void t.test("delivery - receiver down for a while, then back: every event delivered, none twice after success", async (t) => {
  const receiver = await world.receiver(() => []);
  const hook = await world.subscribe(receiver.url);
  await receiver.close();
  await world.start({ retryScheduleMs: [0, 200, 200, 400, 400, 800, 800, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000] });
  const events = await Promise.all(Array.from({ length: 20 }, () => world.publish()));
  await until(t, "every delivery failed at least once", async () => {
    const { rows } = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM webhook_deliveries WHERE tenant_id = $1 AND webhook_id = $2 AND attempt_count >= 1", [world.tenantId, hook.id]);
    return rows[0].n === events.length;
  });
  const { rows: failures } = await db.query<{ outcome: number }>("SELECT DISTINCT a.outcome FROM webhook_delivery_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = $1", [hook.id]);
  t.same(failures.map((f) => f.outcome), [WebhookAttemptOutcome.CONNECTION_ERROR], "a receiver that is down: connection errors");
  await receiver.reopen();
  await until(t, "every event delivered", async () => (await world.statusCounts(hook.id)).succeeded === events.length, { timeoutMs: 60_000 });
  for (const event of events) t.equal(receiver.countOf(event.eventId), 1, `event ${event.eventId} received once`);
  t.same(await world.statusCounts(hook.id), { succeeded: events.length });
  await world.reset();
});

void t.test("delivery - failing without a success for longer than disableAfter disables the subscription, and an audit event says so", async (t) => {
  const receiver = await world.receiver(() => []);
  const hook = await world.subscribe(receiver.url);
  receiver.answer = (_a, res) => {
    res.statusCode = 500;
    res.end();
  };
  await world.start({ retryScheduleMs: [0, ...Array.from({ length: 40 }, () => 100)], disableAfterMs: 1_000 });
  await world.publish();
  await until(t, "disabled", async () => (await webhookOf(hook.id)).state === 2);
  const webhook = await webhookOf(hook.id);
  t.equal(webhook.disabled_reason, WebhookDisabledReason.REPEATED_FAILURES);
  // Recorded just after the disabling transaction commits: waited for, not raced.
  const audit = await waitFor(t, "the audit event of the disable", () => world.audit.find((e) => e.resource === `webhooks/${hook.id}`));
  t.equal(audit?.action, "jobmesh.v1.WebhookService.DisableWebhook");
  t.equal(audit?.actor?.subject, "system/webhooks");
  t.equal(audit?.tenant, world.tenantId);
  t.match(audit?.outcome?.message, /REPEATED_FAILURES/);
  t.same(await world.statusCounts(hook.id), { failed: 1 });
  await world.reset();
});

void t.test("delivery - a receiver that never answers does not delay another's deliveries", async (t) => {
  const stuck = await world.receiver(() => []);
  stuck.answer = () => {}; // never answers
  const fast = await world.receiver(() => []);
  const slowHook = await world.subscribe(stuck.url, { maxConcurrency: 5 });
  const fastHook = await world.subscribe(fast.url);
  // A process budget of 8: the stuck subscription holds its fair share of it (claim.ts), at most
  // its concurrency of 5, never all.
  await world.start({ timeoutMs: 120_000 }, { maxInFlight: 8 });
  const events: JobEvent[] = [];
  for (let i = 0; i < 40; i++) events.push(await world.publish());
  await until(t, "every event reached the fast receiver", () => events.every((e) => fast.countOf(e.eventId) === 1), { timeoutMs: 60_000 });
  await until(t, "the stuck receiver holds requests", () => stuck.arrivals.length >= 1);
  t.ok(stuck.arrivals.length <= 5, `the stuck receiver holds ${stuck.arrivals.length} requests: its share, within its concurrency`);
  t.same(await world.statusCounts(slowHook.id), { pending: 40 }, "nothing of the stuck subscription finished (its attempts still wait)");
  await until(t, "the fast deliveries recorded", async () => (await world.statusCounts(fastHook.id)).succeeded === 40);
  await stuck.close(); // ends the hanging requests, so the engine stops without waiting 2 minutes
  await world.reset();
});

void t.test("delivery - several stuck subscriptions asking together for more than the process budget leave room for another", async (t) => {
  const stuck = await world.receiver(() => []);
  stuck.answer = () => {}; // never answers
  const fast = await world.receiver(() => []);
  // Four stuck subscriptions that could hold 5 each: 20 asked of a budget of 8.
  const stuckHooks = [];
  for (let i = 0; i < 4; i++) stuckHooks.push(await world.subscribe(stuck.url, { maxConcurrency: 5 }));
  const fastHook = await world.subscribe(fast.url);
  await world.start({ timeoutMs: 120_000 }, { maxInFlight: 8 });
  const backlog: JobEvent[] = [];
  for (let i = 0; i < 10; i++) backlog.push(await world.publish());
  await until(t, "the stuck receiver holds requests", () => stuck.arrivals.length >= 4);
  // Events that arrive while the stuck ones hold what they were given.
  const events: JobEvent[] = [];
  for (let i = 0; i < 20; i++) events.push(await world.publish());
  await until(t, "every event reached the fast receiver", () => [...backlog, ...events].every((e) => fast.countOf(e.eventId) === 1), { timeoutMs: 60_000 });
  t.ok(stuck.arrivals.length < 8, `the stuck subscriptions hold ${stuck.arrivals.length} of the budget of 8, never all of it`);
  await until(t, "the fast deliveries recorded", async () => (await world.statusCounts(fastHook.id)).succeeded === 30);
  await stuck.close();
  await world.reset();
});

void t.test("delivery - leases taken by the hot-path insert and by claims, in different processes, stay within max_concurrency together", async (t) => {
  const hook = await world.subscribe("http://127.0.0.1:9/never-sent", { maxConcurrency: 3 });
  // Each call below stands for a different process: nothing of its own in flight, full buckets.
  const batch = (n: number) => deliveriesTo(hook.id, Array.from({ length: n }, () => randomUUID()));
  const hotInsert = async (n: number) => {
    const leased: ClaimedRow[] = [];
    const result = await insertDeliveries(db, batch(n), { firstDelayMs: 0, dueChannel: "webhooks_test_unheard", lease: freshProcess(), onLeased: (rows) => void leased.push(...rows) });
    return { ...result, rows: leased };
  };
  const first = await hotInsert(2);
  t.same([first.inserted, first.leased, first.rows.length], [2, 2, 2], "the first process leases both of its rows at insert");
  const second = await hotInsert(4);
  t.same([second.inserted, second.leased], [4, 1], "another process leases only what the first left of the 3");
  t.same(await claimDue(db, freshProcess()), { rows: [], readyLeft: true }, "a third process's claim finds the subscription at its limit, its ready row left");
  // Two inserts at once, by two more processes: together still within the limit once one send ends.
  await db.query("UPDATE webhook_deliveries SET lease_until = NULL WHERE id = $1", [first.rows[0].id]);
  const racing = await Promise.all([hotInsert(3), hotInsert(3)]);
  t.equal(racing[0].leased + racing[1].leased, 1, "two inserts racing lease the one free place once");
  const { rows } = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM webhook_deliveries WHERE webhook_id = $1 AND lease_until > now()", [hook.id]);
  t.equal(rows[0].n, 3, "3 leased in all");
  await world.reset();
});

void t.test("delivery - a subscription's rate bucket is shared: processes leasing one after another draw on the same tokens", async (t) => {
  const hook = await world.subscribe("http://127.0.0.1:9/never-sent", { maxConcurrency: 100, maxRatePerSecond: 4 });
  const rows = deliveriesTo(hook.id, Array.from({ length: 10 }, () => randomUUID()));
  // The clock runs on between statements: a step may find what refilled since the previous step
  // began (4 per second; the bucket's own clock started later), no more.
  let since = performance.now();
  const claimNow = async () => {
    const started = performance.now();
    const claimed = (await claimDue(db, freshProcess())).rows.length;
    const bound = Math.floor(((performance.now() - since) / 1000) * 4);
    since = started;
    return { claimed, bound };
  };
  const hot = await insertDeliveries(db, rows, { firstDelayMs: 0, dueChannel: "webhooks_test_unheard", lease: freshProcess(), onLeased: () => {} });
  t.same([hot.inserted, hot.leased], [10, 4], "the insert leases a full bucket's 4 tokens, not 10");
  let next = await claimNow();
  t.ok(next.claimed <= next.bound, `another process's claim right after finds the bucket empty (${next.claimed} claimed, ${next.bound} refilled meanwhile)`);
  // A second later, as far as the bucket knows: 4 tokens again, and no more.
  await db.query("UPDATE webhooks SET rate_refill_time = rate_refill_time - interval '1 second' WHERE id = $1", [hook.id]);
  next = await claimNow();
  t.equal(next.claimed, 4, "after a second's refill a third process claims 4 (a bucket holds one second's worth)");
  next = await claimNow();
  t.ok(next.claimed <= next.bound, `and then none (${next.claimed} claimed, ${next.bound} refilled meanwhile)`);
  // Half a second's refill: 2.
  await db.query("UPDATE webhooks SET rate_refill_time = rate_refill_time - interval '500 milliseconds' WHERE id = $1", [hook.id]);
  next = await claimNow();
  t.ok(next.claimed >= 2 && next.claimed <= 2 + next.bound, `half a second later, 2 (${next.claimed})`);
  await world.reset();
});

void t.test("delivery - an automatic disable racing a fan-out insert leaves no delivery pending, whichever commits first", async (t) => {
  const hook = await world.subscribe("http://127.0.0.1:9/never-sent");
  const newRows = (eventId: string) => deliveriesTo(hook.id, [eventId]);
  const gone = { outcome: WebhookAttemptOutcome.HTTP_ERROR, statusCode: 410, latencyUs: 1, responseExcerpt: "", errorMessage: "", attemptTime: new Date() };
  const deps = { retryScheduleMs: [0, 100], disableAfterMs: 86_400_000, changedChannel: "webhooks_test_unheard" };
  // A delivery in flight, whose 410 will disable the subscription.
  await insertDeliveries(db, newRows(randomUUID()), { firstDelayMs: 0, dueChannel: "webhooks_test_unheard" });
  const [claimed] = (await claimDue(db, freshProcess(1))).rows;
  const inFlight = { id: claimed.id, webhookId: hook.id, tenantId: world.tenantId, lease: claimed.lease, attempt: 1, replay: false };
  // Whether some backend waits for a lock the backend `pid` holds.
  const blockedBy = async (pid: number) => {
    const { rows } = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", [pid]);
    return rows[0].n > 0;
  };

  // The fan-out's insert first: its transaction is open (as insertDeliveries holds it, FOR KEY SHARE and the row).
  const fanout = await db.connect();
  const laterEvent = randomUUID();
  try {
    await fanout.query("BEGIN");
    await fanout.query("SELECT 1 FROM webhooks WHERE id = $1 FOR KEY SHARE", [hook.id]);
    await fanout.query(
      "INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_id, event_type, job, event, status, next_attempt_time) VALUES ($1, $2, $3, 1, 'jobs/x', ''::bytea, 1, now())",
      [world.tenantId, hook.id, laterEvent],
    );
    const fanoutPid = (await fanout.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0].pid;
    const disabling = recordFailure(db, inFlight, gone, deps);
    await until(t, "the disable waits for the insert's transaction", () => blockedBy(fanoutPid));
    await fanout.query("COMMIT");
    t.equal((await disabling)?.reason, WebhookDisabledReason.ENDPOINT_GONE, "410 disabled the subscription");
  } finally {
    fanout.release();
  }
  t.equal((await deliveryOf(hook.id, laterEvent))?.status, 3, "the row the insert committed first is FAILED with the rest, not left pending");

  // The disable first: an insert starting while it is open waits for it, then skips the subscription.
  await db.query("UPDATE webhooks SET state = 1, disabled_reason = 0, disable_time = NULL WHERE id = $1", [hook.id]);
  const disabler = await db.connect();
  try {
    await disabler.query("BEGIN");
    await disabler.query("SELECT 1 FROM webhooks WHERE id = $1 FOR UPDATE", [hook.id]);
    await disabler.query("UPDATE webhooks SET state = 2, disabled_reason = 2 WHERE id = $1", [hook.id]);
    const disablerPid = (await disabler.query<{ pid: number }>("SELECT pg_backend_pid() AS pid")).rows[0].pid;
    const lastEvent = randomUUID();
    const inserting = insertDeliveries(db, newRows(lastEvent), { firstDelayMs: 0, dueChannel: "webhooks_test_unheard" });
    await until(t, "the insert waits for the disable", () => blockedBy(disablerPid));
    await disabler.query("COMMIT");
    t.equal((await inserting).inserted, 0, "then it inserts nothing for the disabled subscription");
    t.equal(await deliveryOf(hook.id, lastEvent), undefined);
  } finally {
    disabler.release();
  }
  await world.reset();
});

void t.test("delivery - a replay asked for while an attempt is in flight is still sent after it, as a replay", async (t) => {
  const hook = await world.subscribe("http://127.0.0.1:9/never-sent");
  const ok = { outcome: WebhookAttemptOutcome.SUCCEEDED, statusCode: 200, latencyUs: 1, responseExcerpt: "", errorMessage: "", attemptTime: new Date() };
  const failed = { ...ok, outcome: WebhookAttemptOutcome.HTTP_ERROR, statusCode: 500 };
  const deps = { retryScheduleMs: [0, 3_600_000], disableAfterMs: 86_400_000, changedChannel: "webhooks_test_unheard" };
  const eventIds = [randomUUID(), randomUUID()];
  await insertDeliveries(db, deliveriesTo(hook.id, eventIds), { firstDelayMs: 0, dueChannel: "webhooks_test_unheard" });
  const { rows: first } = await claimDue(db, freshProcess(10));
  t.equal(first.length, 2);
  for (const row of first) await replayDelivery(db, world.tenantId, `webhooks/${hook.id}/deliveries/${row.id}`);
  const claimed = (row: ClaimedRow) => ({ id: row.id, webhookId: hook.id, tenantId: world.tenantId, lease: row.lease, attempt: row.attempt_count + 1, replay: row.replay_pending });
  // One attempt succeeds, the other fails (its retry an hour away): both owe the replay now.
  t.equal(await recordSuccesses(db, [{ delivery: claimed(first[0]), result: ok }]), 1);
  await recordFailure(db, claimed(first[1]), failed, deps);
  const { rows: again } = await claimDue(db, freshProcess(10));
  t.same(again.map((r) => r.id).sort(), first.map((r) => r.id).sort(), "both are due again at once");
  t.ok(again.every((r) => r.replay_pending), "and their next attempt is a replay");
  await recordSuccesses(db, again.map((row) => ({ delivery: claimed(row), result: ok })));
  t.same(await world.statusCounts(hook.id), { succeeded: 2 }, "the replays done, nothing more is owed");
  const { rows } = await db.query<{ replay: boolean }>("SELECT a.replay FROM webhook_delivery_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = $1 ORDER BY a.attempt", [hook.id]);
  t.same(rows.map((r) => r.replay), [false, false, true, true], "the log shows each first attempt, then its replay");
  await world.reset();
});

void t.test("delivery - a backlog held back by max_concurrency drains send after send, not poll after poll", async (t) => {
  const receiver = await world.receiver(() => []);
  const hook = await world.subscribe(receiver.url, { maxConcurrency: 1 });
  const events: JobEvent[] = [];
  for (let i = 0; i < 10; i++) events.push(await world.publish());
  // A poll a minute away: only the wake-ups (rows inserted, a send ending while rows wait) can drain it.
  await world.start({}, { pollMs: 60_000 });
  await until(t, "all 10 delivered, one at a time", () => events.every((e) => receiver.countOf(e.eventId) === 1), { timeoutMs: 30_000 });
  await until(t, "all recorded", async () => (await world.statusCounts(hook.id)).succeeded === 10);
  await world.reset();
});

void t.test("delivery - outcomes whose lease ended are discarded and counted (the dispatcher logs them)", async (t) => {
  const receiver = await world.receiver(() => []);
  const hook = await world.subscribe(receiver.url);
  await world.start({});
  const event = await world.publish();
  await until(t, "delivered", async () => (await deliveryOf(hook.id, event.eventId))?.status === 2);
  const { rows } = await db.query<{ id: string }>("SELECT id FROM webhook_deliveries WHERE webhook_id = $1 AND event_id = $2", [hook.id, event.eventId]);
  const delivery = { id: rows[0].id, webhookId: hook.id, tenantId: world.tenantId, lease: new Date(0).toISOString(), attempt: 2, replay: false };
  const result = { outcome: WebhookAttemptOutcome.SUCCEEDED, statusCode: 200, latencyUs: 1, responseExcerpt: "", errorMessage: "", attemptTime: new Date() };
  t.equal(await recordSuccesses(db, [{ delivery, result }]), 0, "a success under an ended lease is not recorded, and the count says so");
  const warned: unknown[] = [];
  const failed = { ...result, outcome: WebhookAttemptOutcome.HTTP_ERROR, statusCode: 500 };
  await recordFailure(db, delivery, failed, { retryScheduleMs: [0, 100], disableAfterMs: 86_400_000, changedChannel: "webhooks_changed", log: { warn: (o: unknown) => void warned.push(o) } });
  t.same(warned, [{ delivery: delivery.id, discarded: 1 }], "a failure under an ended lease is logged as discarded");
  t.same(await world.statusCounts(hook.id), { succeeded: 1 }, "neither moved the delivery");
  await world.reset();
});

void t.test("delivery - during a rotation both secrets sign; after the overlap only the new one", async (t) => {
  const previous = generateWebhookSecret();
  let current = "";
  const both = await world.receiver(() => [current, previous]);
  const hook = await world.subscribe(both.url, { previousSecret: previous, previousExpire: new Date(Date.now() + 3_600_000) });
  current = hook.secret;
  await world.start({});
  const event = await world.publish();
  await until(t, "delivered", () => both.countOf(event.eventId) === 1);
  const arrival = both.arrivals[0];
  t.ok(arrival.verified, "verified with the new secret AND with the old one, each alone");
  t.equal(arrival.headers["webhook-signature"].split(" ").length, 2);

  await db.query("UPDATE webhooks SET previous_secret_expire_time = now() - interval '1 second' WHERE id = $1", [hook.id]);
  const later = await world.publish();
  await until(t, "delivered after the overlap", () => both.countOf(later.eventId) === 1);
  const after = both.arrivals.find((a) => a.id === later.eventId)!;
  t.equal(after.headers["webhook-signature"].split(" ").length, 1, "one signature");
  t.notOk(after.verified, "the old secret no longer verifies");
  await world.reset();
});

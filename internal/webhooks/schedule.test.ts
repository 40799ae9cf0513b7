import t from "tap";
import { firstAttemptDelayMs, jittered, maxRetryAfterMs, nextAttemptDelayMs, parseRetryAfter } from "./schedule.ts";

const svix = [0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000, 36_000_000];

void t.test("schedule - the first attempt is the first entry, then each failure waits the next one with ±20% jitter", async (t) => {
  t.equal(firstAttemptDelayMs(svix), 0);
  t.equal(nextAttemptDelayMs(svix, 1, undefined, () => 0.5), 5_000, "after attempt 1: 5 s (no jitter at the middle)");
  t.equal(nextAttemptDelayMs(svix, 1, undefined, () => 0), 4_000, "jitter low end: -20%");
  t.equal(nextAttemptDelayMs(svix, 1, undefined, () => 0.999999), 6_000, "jitter high end: +20%");
  t.equal(nextAttemptDelayMs(svix, 2, undefined, () => 0.5), 300_000, "after attempt 2: 5 min");
  t.equal(nextAttemptDelayMs(svix, 7, undefined, () => 0.5), 36_000_000, "after attempt 7: the last entry");
  t.equal(nextAttemptDelayMs(svix, 8), undefined, "after the 8th attempt: exhausted");
  for (let i = 0; i < 1000; i++) {
    const d = jittered(10_000);
    if (d < 8_000 || d > 12_000) t.fail(`jitter out of bounds: ${d}`);
  }
});

void t.test("schedule - Retry-After replaces the scheduled delay, capped at a day, and never extends the schedule", async (t) => {
  t.equal(nextAttemptDelayMs(svix, 1, 120_000), 120_000);
  t.equal(nextAttemptDelayMs(svix, 2, 1_000), 1_000, "shorter than the schedule: honoured");
  t.equal(nextAttemptDelayMs(svix, 1, 10 * maxRetryAfterMs), maxRetryAfterMs);
  t.equal(nextAttemptDelayMs(svix, 8, 1_000), undefined);
});

void t.test("Retry-After - delta seconds or an HTTP date; garbage is ignored", async (t) => {
  const now = Date.parse("2026-12-07T12:00:00Z");
  t.equal(parseRetryAfter("120", now), 120_000);
  t.equal(parseRetryAfter(" 0 ", now), 0);
  t.equal(parseRetryAfter(["3"], now), 3_000);
  t.equal(parseRetryAfter("Mon, 07 Dec 2026 12:01:30 GMT", now), 90_000);
  t.equal(parseRetryAfter("Mon, 07 Dec 2026 11:00:00 GMT", now), 0, "a date in the past: now");
  t.equal(parseRetryAfter("99999999", now), maxRetryAfterMs, "capped at a day");
  t.equal(parseRetryAfter("Fri, 07 Dec 2040 12:00:00 GMT", now), maxRetryAfterMs);
  t.equal(parseRetryAfter(undefined, now), undefined);
  t.equal(parseRetryAfter("", now), undefined);
  t.equal(parseRetryAfter("-5", now), undefined);
  t.equal(parseRetryAfter("1.5", now), undefined);
  t.equal(parseRetryAfter("soon", now), undefined);
});

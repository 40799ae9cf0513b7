/**
 * When a failed delivery is tried again: Svix's schedule (JOBMESH_WEBHOOKS_RETRY_SCHEDULE, the
 * delay before each attempt from the first), with ±20% jitter so that deliveries which failed
 * together (a receiver's outage) do not come back together, and the receiver's `Retry-After`
 * used instead when it sent one, bounded by a day.
 */

/** Jitter: each delay is spread uniformly over ±20% of itself. */
export const jitterFraction = 0.2;
/** The longest Retry-After honoured; a receiver cannot park a delivery for longer. */
export const maxRetryAfterMs = 24 * 3_600_000;

/** The delay before the first attempt: the schedule's first entry, without jitter (0 is "now"). */
export function firstAttemptDelayMs(scheduleMs: readonly number[]): number {
  return scheduleMs[0] ?? 0;
}

/**
 * The delay before the next attempt after attempt number `attemptsMade` (from 1) failed, or
 * undefined when the schedule is exhausted (the delivery FAILED). `retryAfterMs`, when the
 * answer carried one, replaces the scheduled delay but never extends the schedule's length.
 */
export function nextAttemptDelayMs(scheduleMs: readonly number[], attemptsMade: number, retryAfterMs?: number, random: () => number = Math.random): number | undefined {
  if (attemptsMade >= scheduleMs.length) return undefined;
  if (retryAfterMs !== undefined) return Math.min(Math.max(0, retryAfterMs), maxRetryAfterMs);
  return jittered(scheduleMs[attemptsMade], random);
}

/** `ms` spread over [ms·0.8, ms·1.2], rounded to a millisecond. */
export function jittered(ms: number, random: () => number = Math.random): number {
  return Math.max(0, Math.round(ms * (1 - jitterFraction + 2 * jitterFraction * random())));
}

/**
 * A `Retry-After` header in milliseconds from `now`: delta-seconds or an HTTP date (RFC 9110
 * 10.2.3), at most a day; undefined when absent or malformed (then the schedule decides).
 */
export function parseRetryAfter(value: string | string[] | undefined, now: number = Date.now()): number | undefined {
  const raw = (Array.isArray(value) ? value[0] : value)?.trim();
  if (!raw) return undefined;
  if (/^\d{1,10}$/.test(raw)) return Math.min(Number(raw) * 1000, maxRetryAfterMs);
  // An HTTP date always names its weekday or month in letters; a bare number was handled above.
  if (!/[a-z]/i.test(raw)) return undefined;
  const at = Date.parse(raw);
  if (Number.isNaN(at)) return undefined;
  return Math.min(Math.max(0, at - now), maxRetryAfterMs);
}

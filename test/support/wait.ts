/**
 * The one polling wait of the tests: a condition is checked every `intervalMs` until it holds or
 * a generous deadline passes (a loaded 2-core machine is slow, never wrong). Past the deadline
 * the test fails with what it waited for, instead of hanging until tap's timeout.
 */
import type { Test } from "tap";

export interface WaitOptions {
  /** How long to wait before failing (default 30 s). */
  timeoutMs?: number;
  /** How often to check (default 20 ms). */
  intervalMs?: number;
}

/**
 * Polls `probe` until it answers something other than undefined/false and returns that; fails
 * `t` (and throws, so the test stops there) past the deadline.
 */
export async function waitFor<T>(t: Test, what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, options: WaitOptions = {}): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  for (;;) {
    const value = await probe();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) {
      t.fail(`timed out waiting for ${what}`);
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 20));
  }
}

/** Waits until `condition` holds (polling); fails the test past the deadline. */
export async function until(t: Test, what: string, condition: () => boolean | Promise<boolean>, options: WaitOptions = {}): Promise<void> {
  await waitFor(t, what, async () => (await condition()) || undefined, options);
}

import t from "tap";
import { backoffMs } from "./transitions.ts";

const policy = { maxAttempts: 5, initialMs: 100, maxMs: 1000, multiplier: 2, jitter: 0.2 };

void t.test("backoff - grows exponentially and is capped", async (t) => {
  const mid = () => 0.5; // no jitter at the midpoint
  t.same([1, 2, 3, 4, 5, 6].map((n) => backoffMs(policy, n, mid)), [100, 200, 400, 800, 1000, 1000]);
});

void t.test("backoff - jitter spreads by the configured fraction either way", async (t) => {
  t.equal(backoffMs(policy, 2, () => 0), 160);
  t.equal(backoffMs(policy, 2, () => 0.999999), 240);
  const zero = { ...policy, jitter: 0 };
  t.equal(backoffMs(zero, 2, () => 0), 200);
});

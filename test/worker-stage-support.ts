/**
 * Helpers of the stage-thread tests: a large legitimate document, sums of a metric on /metrics,
 * and waiting for a condition.
 */
import { PROSE } from "./stages-fixtures.ts";

/** About `bytes` of English prose in numbered paragraphs, each with an address and a phone number. */
export function largeProse(bytes: number): string {
  const parts: string[] = [];
  let length = 0;
  for (let i = 0; length < bytes; i++) {
    const paragraph = `${PROSE} Item ${i}: write to clerk${i}@example.com or call +1 415 555 ${String(i % 10_000).padStart(4, "0")}.\n\n`;
    parts.push(paragraph);
    length += paragraph.length;
  }
  return parts.join("");
}

/**
 * The sum of a metric's samples on a Prometheus /metrics page, over the samples whose labels
 * contain `labels` (e.g. `stage="enrich"`); 0 when there is none yet.
 */
export async function metricSum(url: string, name: string, labels = ""): Promise<number> {
  const text = await (await fetch(url)).text();
  let sum = 0;
  for (const [, sampleLabels = "", value] of text.matchAll(new RegExp(`^${name}(?:\\{([^}]*)\\})? (\\S+)$`, "gm"))) {
    if (sampleLabels.includes(labels)) sum += Number(value);
  }
  return sum;
}

/** Polls `check` until it resolves true; throws after `timeoutMs`. */
export async function untilTrue(check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

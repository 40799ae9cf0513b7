/**
 * The load process forked by `startLoadGenerator`: for each spec it receives, imports the named
 * module, builds the call with its factory, runs the closed loop, closes the client and replies
 * with the result (pooled with the earlier runs of its series, if it names one). It exits when
 * the parent disconnects.
 */
import { poolInto, sampleLoad, summarize, type CallFactory, type LoadSample, type LoadSpec } from "./harness.ts";

if (!process.send) throw new Error("load-generator.ts runs as a child of bench/harness.ts");
const send = process.send.bind(process);
const series = new Map<string, LoadSample>();

process.on("message", (spec: LoadSpec) => {
  void (async () => {
    try {
      const mod = (await import(spec.module)) as Record<string, CallFactory<unknown>>;
      const factory = mod[spec.factory];
      if (typeof factory !== "function") throw new Error(`${spec.module} exports no function ${spec.factory}`);
      const client = factory(spec.args);
      try {
        const sample = await sampleLoad(client.call, spec.options, () => send({ windowStart: true }));
        let pooled = sample;
        if (spec.series !== undefined) {
          const earlier = series.get(spec.series);
          if (earlier) pooled = poolInto(earlier, sample);
          else series.set(spec.series, sample);
        }
        send({ result: summarize(pooled) });
      } finally {
        await client.close?.();
      }
    } catch (error) {
      send({ error: error instanceof Error ? error.message : String(error) });
    }
  })();
});
process.on("disconnect", () => process.exit(0));
send({ ready: true });

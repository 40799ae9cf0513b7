import t from "tap";
import { knowsSyncAlways } from "./nats.ts";

void t.test("sync_interval: always only for nats-server 2.10 and later", async (t) => {
  t.equal(knowsSyncAlways("nats-server: v2.9.10\n"), false);
  t.equal(knowsSyncAlways("nats-server: v2.10.0\n"), true);
  t.equal(knowsSyncAlways("nats-server: v2.12.3\n"), true);
  t.equal(knowsSyncAlways("nats-server: v3.0.0\n"), true);
  t.equal(knowsSyncAlways(""), false, "no nats-server: the flag is not used");
});

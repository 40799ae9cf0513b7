/**
 * The webhook delivery engine alone in a process, for the test that SIGKILLs it mid-delivery.
 * Its settings come as one JSON argument (see startProcess in webhooks-delivery.ts); SIGTERM
 * stops it cleanly.
 */
import { connectBus } from "../../internal/bus/index.ts";
import { createPool } from "../../internal/db/index.ts";
import { createTopology } from "../../internal/bus/topology.ts";
import { createLogger } from "../../internal/telemetry/index.ts";
import { startWebhookDelivery, type WebhookDeliveryDeps } from "../../internal/webhooks/delivery.ts";

const settings = JSON.parse(process.argv[2]) as {
  databaseUrl: string;
  natsUrl: string;
  namespace: string;
  keyEncryptionKey: string;
  config: WebhookDeliveryDeps["config"];
};
const log = createLogger({ name: "webhooks-delivery-child", level: "warn" });
const db = createPool({ url: settings.databaseUrl });
const bus = await connectBus({ url: settings.natsUrl, name: "webhooks-delivery-child", log });
const engine = await startWebhookDelivery({
  db,
  js: bus.js,
  topology: createTopology(settings.namespace),
  log,
  config: settings.config,
  keyEncryptionKey: Buffer.from(settings.keyEncryptionKey, "base64"),
  publicUrl: "https://jobmesh.example.com",
});
process.once("SIGTERM", () => {
  void (async () => {
    await engine.stop();
    await bus.close();
    await db.end();
    process.exit(0);
  })();
});

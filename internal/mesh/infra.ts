/**
 * The shared dependencies every service process builds the same way: Postgres (migrated), the
 * Redis cache, NATS, the bootstrap tenant, and the readiness checks over all three.
 */
import { createValidator } from "@bufbuild/protovalidate";
import { connectBus, type Bus } from "../bus/index.ts";
import { createCache, type Cache } from "../cache/index.ts";
import type { Config } from "../config/index.ts";
import { createPool, ensureTenant, migrate, pingDb, readSetting, type Pool } from "../db/index.ts";
import { createPageTokens, type PageTokens } from "../paging/index.ts";
import type { ReadinessChecks } from "../rpc/readiness.ts";
import type { Logger, Telemetry } from "../telemetry/index.ts";

export interface Infra {
  config: Config;
  log: Logger;
  telemetry: Telemetry;
  db: Pool;
  cache: Cache;
  bus: Bus;
  pageTokens: PageTokens;
  validator: ReturnType<typeof createValidator>;
  /** Id of the bootstrap tenant (the caller's tenant until identity lands). */
  bootstrapTenantId: string;
  readiness: ReadinessChecks;
  close(): Promise<void>;
}

export async function createInfra(config: Config, log: Logger, telemetry: Telemetry, processName: string): Promise<Infra> {
  await migrate(config.databaseUrl, log);
  const db = createPool({ url: config.databaseUrl, applicationName: `jobmesh-${processName}` });
  const cache = createCache({ url: config.redisUrl, prefix: config.namespace, meter: telemetry.meter, log });
  const bus = await connectBus({ url: config.natsUrl, name: `jobmesh-${processName}`, log });
  const bootstrapTenantId = await ensureTenant(db, config.bootstrapTenant);
  const pageTokens = createPageTokens(await readSetting(db, "page_token_secret"));
  return {
    config,
    log,
    telemetry,
    db,
    cache,
    bus,
    pageTokens,
    validator: createValidator(),
    bootstrapTenantId,
    readiness: { postgres: () => pingDb(db), nats: () => bus.ping(), redis: () => cache.ping() },
    async close() {
      await Promise.allSettled([bus.close(), cache.close(), db.end()]);
    },
  };
}

/**
 * `jobmesh up`: the whole mesh on one machine, in one process. Uses the Postgres, Redis and NATS
 * the environment names where they answer and starts local ones (data under the data dir) for
 * the rest; then migrates, serves every service on its port, writes mesh.json and prints where
 * everything is. stop() undoes all of it, including the servers it started.
 */
import { chmod, mkdir, rename, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import ipaddr from "ipaddr.js";
import type { Config, WebhooksConfig } from "../config/index.ts";
import { startDevStack } from "../devstack/index.ts";
import type { RpcServer } from "../rpc/server.ts";
import type { Logger, Telemetry } from "../telemetry/index.ts";
import { createInfra } from "./infra.ts";
import type { BootstrapAdmin } from "../auth/bootstrap.ts";
import { ensureBootstrapAdmin, serveAudit, serveAuth, serveJobs, servePipelines, serveWebhooks, startWorkers } from "./servers.ts";
import { startGatewayProcess, type GatewayProcess } from "./gateway-process.ts";

export interface MeshDescription {
  /** Base URL of each service (gRPC, Connect and gRPC-Web on the same port). */
  services: Record<string, string>;
  /**
   * Without its password (as are the Redis and NATS URLs): mesh.json is for finding the mesh, not a credential. It is in
   * DATABASE_URL when that was given; the local Postgres `jobmesh up` starts uses the fixed
   * development login of internal/devstack/postgres.ts.
   */
  databaseUrl: string;
  redisUrl: string;
  natsUrl: string;
  namespace: string;
  /** Servers `jobmesh up` started itself; they stop with it. */
  startedLocally: string[];
  /** What is not served yet, said plainly. */
  notYetBuilt: string[];
  authentication: string;
  /** The bootstrap tenant's admin; its password appears only in the console, once, when generated. */
  admin: { email: string; created: boolean };
  /** Whose x-forwarded-for the services believe (JOBMESH_TRUSTED_PROXIES; none when unset). */
  trustedProxies: string[];
}

/**
 * The address the local gateway connects to the services from, and so the one proxy they trust by
 * default: every client of a local mesh connects from 127.0.0.1, and trusting that would let any
 * of them name its own address (and so escape the per-address login limits).
 */
export const localGatewaySourceAddress = "127.0.0.2";

/** `url` without its password, and the same with the password shown as *** for the console. */
function splitPassword(url: string): { withoutPassword: string; masked: string } {
  const parsed = new URL(url);
  if (!parsed.password) return { withoutPassword: url, masked: url };
  parsed.password = "";
  const withoutPassword = parsed.href;
  parsed.password = "***";
  return { withoutPassword, masked: parsed.href };
}

/** Writes mesh.json readable by its owner only, whole or not at all (a reader never sees half of it). */
async function writeMeshFile(path: string, description: MeshDescription): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, JSON.stringify(description, null, 2) + "\n", { mode: 0o600 });
  // The mode given to writeFile is masked by the umask; chmod is not.
  await chmod(temporary, 0o600);
  await rename(temporary, path);
}

/** True when `host` (JOBMESH_HOST) is a loopback address or localhost: the services listen for this machine only. */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[(.*)\]$/, "$1");
  if (bare.toLowerCase() === "localhost") return true;
  return ipaddr.isValid(bare) && ipaddr.process(bare).range() === "loopback";
}

/**
 * The webhooks settings of the local mesh: http and loopback receivers allowed unless the
 * environment said otherwise, and only when the mesh listens on a loopback `host`. A mesh other
 * machines can reach keeps them off: anyone who can subscribe could reach this machine's ports.
 */
export function localMeshWebhooks(webhooks: WebhooksConfig, host: string): WebhooksConfig {
  const local = isLoopbackHost(host);
  return { ...webhooks, allowHttp: webhooks.explicitPolicy.allowHttp ?? local, allowLoopback: webhooks.explicitPolicy.allowLoopback ?? local };
}

/**
 * The start-up line that says which webhook receivers this mesh lets through, and how to change
 * it; given the `host` the mesh listens on, it says why they stay off when it is not loopback.
 */
export function webhookPolicyLine(policy: { allowHttp: boolean; allowLoopback: boolean }, host?: string): string {
  const open = [policy.allowHttp && "http:// URLs", policy.allowLoopback && "loopback addresses (127.0.0.1, ::1)"].filter(Boolean);
  if (open.length === 0 && host !== undefined && !isLoopbackHost(host)) {
    return `webhooks: receivers must be public https URLs; http:// and loopback receivers stay off because JOBMESH_HOST=${host} is not a loopback address`;
  }
  if (open.length === 0) return "webhooks: receivers must be public https URLs";
  return `webhooks: development mode: receivers may use ${open.join(" and ")} (JOBMESH_WEBHOOKS_ALLOW_HTTP / JOBMESH_WEBHOOKS_ALLOW_LOOPBACK=false to refuse; every other configuration refuses them by default)`;
}

export async function meshUp(config: Config, log: Logger, telemetry: Telemetry) {
  const dataDir = resolve(config.dataDir);
  const stack = await startDevStack({
    dataDir,
    ...config.explicitUrls,
    log: (msg, fields) => log.info(fields ?? {}, msg),
  });
  const servers: Record<string, RpcServer> = {};
  let infra: Awaited<ReturnType<typeof createInfra>> | undefined;
  let worker: Awaited<ReturnType<typeof startWorkers>> | undefined;
  let gateway: GatewayProcess | undefined;
  let stopping = false;
  const stop = async () => {
    stopping = true;
    // The edge first, then the servers (no new work), then the worker finishes or abandons its
    // stages, then the pools.
    await gateway?.stop();
    await Promise.allSettled(Object.values(servers).map((s) => s.close()));
    await worker?.stop();
    await infra?.close();
    await stack.stop();
  };
  try {
    // The services trust the local gateway's source address only (not loopback as a whole).
    const server = { ...config.server, trustedProxies: config.server.trustedProxies ?? [`${localGatewaySourceAddress}/32`] };
    // The local development mesh, and only it by default, lets webhooks reach http and loopback
    // receivers, so a new user can try them with a receiver on their own machine. It says so.
    const webhooks = localMeshWebhooks(config.webhooks, config.host);
    console.log(webhookPolicyLine(webhooks, config.host));
    if (webhooks.allowHosts.length > 0) {
      log.warn({ allowHosts: webhooks.allowHosts }, "JOBMESH_WEBHOOKS_ALLOW_HOSTS is set: it is for tests only, and lets webhooks reach these loopback targets");
    }
    const resolved = { ...config, databaseUrl: stack.databaseUrl, redisUrl: stack.redisUrl, natsUrl: stack.natsUrl, server, webhooks };
    infra = await createInfra(resolved, log, telemetry, "mesh");
    servers.auth = await serveAuth(infra);
    servers.audit = await serveAudit(infra);
    servers.pipelines = await servePipelines(infra);
    servers.jobs = await serveJobs(infra);
    servers.webhooks = await serveWebhooks(infra);
    worker = await startWorkers(infra);
    const admin: BootstrapAdmin = await ensureBootstrapAdmin(infra);
    gateway = await startGatewayProcess(
      {
        JOBMESH_HOST: config.host,
        JOBMESH_GATEWAY_PORT: String(config.ports.gateway),
        JOBMESH_JOBS_URL: servers.jobs.url,
        JOBMESH_PIPELINES_URL: servers.pipelines.url,
        JOBMESH_AUTH_URL: servers.auth.url,
        JOBMESH_AUDIT_URL: servers.audit.url,
        JOBMESH_WEBHOOKS_URL: servers.webhooks.url,
        REDIS_URL: stack.redisUrl,
        JOBMESH_NAMESPACE: config.namespace,
        JOBMESH_TOKEN_ISSUER: config.auth.issuer,
        JOBMESH_TOKEN_AUDIENCE: config.auth.audience,
        JOBMESH_GATEWAY_SOURCE_ADDRESS: localGatewaySourceAddress,
        JOBMESH_LOG_LEVEL: config.logLevel === "trace" ? "debug" : config.logLevel === "fatal" ? "error" : config.logLevel,
        // The gateway records the calls it refuses at the edge, as the services record theirs,
        // spooling in a directory of its own beside theirs.
        ...(config.audit.enabled ? { JOBMESH_GATEWAY_NATS_URL: stack.natsUrl, JOBMESH_GATEWAY_AUDIT_SPOOL_DIR: join(resolve(config.audit.spoolDir), "gateway") } : {}),
        ...config.gatewayEnv,
      },
      // Its spans go where the services' go; its warnings and errors reach the console; its access log stays in its own output.
      { otlpEndpoint: config.otlpEndpoint || undefined, onLine: (line) => /"level":"(warn|error)"/.test(line) && log.warn({ gateway: line }, "gateway") },
    );
    // A gateway that dies leaves mesh.json naming a dead URL: say so loudly (stop() ends it on purpose).
    void gateway.exited.then((reason) => stopping || log.error({ reason }, "the gateway exited; REST is down until jobmesh up is restarted"));

    const description: MeshDescription = {
      services: { gateway: gateway.url, ...Object.fromEntries(Object.entries(servers).map(([name, s]) => [name, s.url])) },
      databaseUrl: splitPassword(stack.databaseUrl).withoutPassword,
      redisUrl: splitPassword(stack.redisUrl).withoutPassword,
      natsUrl: splitPassword(stack.natsUrl).withoutPassword,
      namespace: config.namespace,
      startedLocally: stack.started,
      notYetBuilt: [],
      authentication: "JWT (AuthService Login) or API key on every service",
      admin: { email: admin.email, created: admin.created },
      trustedProxies: server.trustedProxies,
    };
    await mkdir(dataDir, { recursive: true });
    const meshFile = join(dataDir, "mesh.json");
    await writeMeshFile(meshFile, description);
    return { description, meshFile, maskedDatabaseUrl: splitPassword(stack.databaseUrl).masked, generatedAdminPassword: admin.generatedPassword, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

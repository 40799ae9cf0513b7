/**
 * A plain HTTP/1.1 server for a process that serves no RPCs (the stage worker): /metrics for
 * Prometheus, /healthz (the process is up) and /readyz (its dependencies answer), the same three
 * endpoints every RPC server has on its own port.
 */
import http from "node:http";
import type net from "node:net";
import type { ServerConfig } from "../config/index.ts";
import type { Logger, Telemetry } from "../telemetry/index.ts";
import { createHealth } from "./health.ts";
import { sendJson, serveOperatorEndpoint } from "./operator-endpoints.ts";
import { createReadiness, type ReadinessChecks } from "./readiness.ts";

export interface MetricsServerOptions {
  /** Names the server in logs, e.g. "worker". */
  name: string;
  host: string;
  /** 0 picks a free port. */
  port: number;
  log: Logger;
  telemetry: Telemetry;
  /** Dependency checks behind /readyz, e.g. { postgres, nats, redis }. */
  readiness: ReadinessChecks;
  /** The same idle and header timeouts as the RPC ports (see startRpcServer). */
  server: Pick<ServerConfig, "idleTimeoutMs" | "headersTimeoutMs">;
}

export interface MetricsServer {
  port: number;
  /** http://host:port; scrape `${url}/metrics`. */
  url: string;
  /** Stops listening and closes every connection, a scrape in progress included. */
  close(): Promise<void>;
}

export async function startMetricsServer(options: MetricsServerOptions): Promise<MetricsServer> {
  const { log } = options;
  // No gRPC health service here: this one only takes the status readiness reports.
  const readiness = createReadiness(options.readiness, createHealth(), log);

  const { idleTimeoutMs, headersTimeoutMs } = options.server;
  const server = http.createServer({
    keepAliveTimeout: idleTimeoutMs,
    headersTimeout: headersTimeoutMs,
    requestTimeout: Math.max(headersTimeoutMs, 300_000),
    connectionsCheckingInterval: Math.min(30_000, Math.max(50, Math.floor(headersTimeoutMs / 4))),
  }, (req, res) => {
    if (req.method !== "GET" && req.method !== "HEAD") return sendJson(res, 405, { error: `${req.method} not allowed` });
    serveOperatorEndpoint(req, res, { readiness, telemetry: options.telemetry });
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  server.on("error", (error) => log.error({ err: error, server: options.name }, "metrics server error"));
  const port = (server.address() as net.AddressInfo).port;
  const url = `http://${options.host.includes(":") ? `[${options.host}]` : options.host}:${port}`;
  log.info({ server: options.name, url, paths: ["/metrics", "/healthz", "/readyz"] }, "serving metrics");

  return {
    port,
    url,
    async close() {
      if (!server.listening) return;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
      log.info({ server: options.name }, "metrics server stopped");
    },
  };
}


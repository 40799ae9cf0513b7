/**
 * A plain HTTP/1.1 server for a process that serves no RPCs (the stage worker): /metrics for
 * Prometheus, /healthz (the process is up) and /readyz (its dependencies answer), the same three
 * endpoints every RPC server has on its own port.
 */
import http from "node:http";
import type net from "node:net";
import type { Logger, Telemetry } from "../telemetry/index.ts";
import { createHealth } from "./health.ts";
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

  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") return sendJson(res, 405, { error: `${req.method} not allowed` });
    if (path === "/healthz") return sendJson(res, 200, { status: "ok" });
    if (path === "/readyz") {
      readiness.check().then(
        (report) => sendJson(res, report.ready ? 200 : 503, report),
        (error: unknown) => sendJson(res, 503, { ready: false, error: String(error) }),
      );
      return;
    }
    if (path === "/metrics") return options.telemetry.serveMetrics(req, res);
    sendJson(res, 404, { error: `no route for ${path}` });
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

function sendJson(res: http.ServerResponse, status: number, body: unknown) {
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader("content-type", "application/json");
  res.setHeader("content-length", Buffer.byteLength(text));
  res.end(text);
}

/**
 * The plain-HTTP endpoints every jobmesh process serves for operators, next to its RPCs or (the
 * stage worker) on their own: /healthz (the process is up), /readyz (its dependencies answer)
 * and /metrics (Prometheus text).
 */
import type http from "node:http";
import type { Telemetry } from "../telemetry/index.ts";
import type { ReadinessReport } from "./readiness.ts";

/** The parts of an http or http2 response that sendJson uses. */
export interface JsonResponse {
  statusCode: number;
  setHeader(name: string, value: string | number): unknown;
  end(text: string): unknown;
}

export function sendJson(res: JsonResponse, status: number, body: unknown) {
  const text = JSON.stringify(body);
  res.statusCode = status;
  res.setHeader("content-type", "application/json");
  res.setHeader("content-length", Buffer.byteLength(text));
  res.end(text);
}

/** Answers /healthz, /readyz and /metrics; anything else is a 404. */
export function serveOperatorEndpoint(
  req: { url?: string },
  res: JsonResponse,
  deps: { readiness: { check(): Promise<ReadinessReport> }; telemetry: Telemetry },
): void {
  const path = (req.url ?? "/").split("?")[0];
  if (path === "/healthz") return sendJson(res, 200, { status: "ok" });
  if (path === "/readyz") {
    deps.readiness.check().then(
      (report) => sendJson(res, report.ready ? 200 : 503, report),
      // check() catches each dependency's error itself; whatever else failed stays in the process.
      () => sendJson(res, 503, { ready: false }),
    );
    return;
  }
  // Node's http and http2 (compatibility API) requests and responses both serve here.
  if (path === "/metrics") return deps.telemetry.serveMetrics(req as http.IncomingMessage, res as unknown as http.ServerResponse);
  sendJson(res, 404, { error: `no route for ${path}` });
}

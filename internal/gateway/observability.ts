/**
 * What the gateway tells its operators: one JSON access-log line per request (method, route
 * template, status, duration, request id, tenant; never a credential), and Prometheus metrics
 * at /metrics from the same OpenTelemetry SDK the services use.
 */
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus";
import { MeterProvider } from "@opentelemetry/sdk-metrics";

export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

export interface GatewayLog {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

const rank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 };

/** JSON lines on `write` (stdout in cmd/gateway), the same shape as the services' pino lines. */
export function createGatewayLog(level: LogLevel, write: (line: string) => void): GatewayLog {
  const emit = (at: Exclude<LogLevel, "silent">, msg: string, fields?: Record<string, unknown>) => {
    if (rank[at] < rank[level]) return;
    write(JSON.stringify({ level: at, time: new Date().toISOString(), name: "gateway", msg, ...fields }));
  };
  return {
    info: (msg, fields) => emit("info", msg, fields),
    warn: (msg, fields) => emit("warn", msg, fields),
    error: (msg, fields) => emit("error", msg, fields),
  };
}

/** Lines gathered and written together: one write per turn of the event loop instead of one per line. */
export interface LineBatcher {
  /** Queues one line (no newline); it is written, in order, with the others of this turn. */
  write(line: string): void;
  /** Writes what is queued now: call it before the process exits, or the last lines are lost. */
  flush(): void;
}

/**
 * Batches log lines for `writeChunk` (in cmd/gateway, `console.log`): under load a write per
 * access-log line is a syscall per request, one per turn is far fewer. `writeChunk` gets the
 * lines joined by "\n", without a final one. A turn that queues `maxLines` writes them at once,
 * so memory stays bounded whatever the rate.
 */
export function createLineBatcher(writeChunk: (text: string) => void, maxLines = 512): LineBatcher {
  let lines: string[] = [];
  let scheduled: ReturnType<typeof setTimeout> | undefined;
  const flush = () => {
    if (scheduled !== undefined) clearTimeout(scheduled);
    scheduled = undefined;
    if (lines.length === 0) return;
    const text = lines.join("\n");
    lines = [];
    writeChunk(text);
  };
  return {
    write(line) {
      lines.push(line);
      if (lines.length >= maxLines) flush();
      else scheduled ??= setTimeout(flush, 0);
    },
    flush,
  };
}

/** One finished request, as the access log and the metrics record it. */
export interface RequestRecord {
  method: string;
  /** The route template ("/v1/{name=jobs/*}"), the procedure of a pass-through call, or what else answered ("not_found", "/healthz"). */
  route: string;
  status: number;
  durationMs: number;
  requestId: string;
  tenant?: string;
}

export interface GatewayMetrics {
  record(request: RequestRecord): void;
  /** The Prometheus text exposition. */
  render(): Promise<Response>;
  shutdown(): Promise<void>;
}

export function createGatewayMetrics(): GatewayMetrics {
  const exporter = new PrometheusExporter({ preventServerStart: true });
  // Its own provider, not the global one: Deno's built-in OpenTelemetry may own that.
  const provider = new MeterProvider({ readers: [exporter] });
  const meter = provider.getMeter("jobmesh-gateway");
  const requests = meter.createCounter("gateway_requests", { description: "HTTP requests answered by the gateway, by route template and status" });
  const duration = meter.createHistogram("gateway_request_duration", {
    description: "Time from request to response headers, by route template",
    unit: "s",
    advice: { explicitBucketBoundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] },
  });
  const serializer = new PrometheusSerializer();
  return {
    record(request) {
      const attributes = { method: request.method, route: request.route, status: String(request.status) };
      requests.add(1, attributes);
      duration.record(request.durationMs / 1000, { method: request.method, route: request.route });
    },
    async render() {
      const { resourceMetrics } = await exporter.collect();
      return new Response(serializer.serialize(resourceMetrics), { headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" } });
    },
    shutdown: () => provider.shutdown(),
  };
}

/** Writes the access-log line of one request. */
export function logRequest(log: GatewayLog, request: RequestRecord): void {
  log.info("request", { ...request, durationMs: Math.round(request.durationMs * 100) / 100 });
}

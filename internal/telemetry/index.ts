/**
 * Process-wide OpenTelemetry: one tracer provider (W3C traceparent propagation, optional OTLP
 * export) and one meter provider read by the Prometheus exporter, which each service serves on
 * its own port at /metrics rather than on a port of its own.
 *
 * Create it once per process in the binary (or test) and pass it down; OTel's API is global, so
 * library code reaches it through `trace.getTracer` / `metrics.getMeter`.
 */
import { metrics, trace, type Meter, type Tracer } from "@opentelemetry/api";
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { NodeSDK } from "@opentelemetry/sdk-node";
import { AlwaysOffSampler, BatchSpanProcessor, NoopSpanProcessor, type SpanProcessor } from "@opentelemetry/sdk-trace";
import type { IncomingMessage, ServerResponse } from "node:http";

export { createLogger, type Logger } from "./log.ts";

export interface TelemetryOptions {
  serviceName: string;
  /** OTLP/HTTP base URL (e.g. http://127.0.0.1:4318); traces are exported there when set. */
  otlpEndpoint?: string;
  /** Extra span processors, e.g. an in-memory exporter in tests. */
  spanProcessors?: SpanProcessor[];
}

export interface Telemetry {
  tracer: Tracer;
  meter: Meter;
  /** Serves the Prometheus text exposition of every metric in this process. */
  serveMetrics(req: IncomingMessage, res: ServerResponse): void;
  shutdown(): Promise<void>;
}

export function startTelemetry(options: TelemetryOptions): Telemetry {
  const prometheus = new PrometheusExporter({ preventServerStart: true });
  const spanProcessors = [...(options.spanProcessors ?? [])];
  if (options.otlpEndpoint) {
    spanProcessors.push(new BatchSpanProcessor({ exporter: new OTLPTraceExporter({ url: new URL("/v1/traces", options.otlpEndpoint).href }) }));
  }
  // With no processor the SDK registers no tracer provider: every span would be the invalid one
  // (trace id all zeros), jobs would report that as their trace_id and no traceparent would reach
  // NATS headers or other services. Without an exporter, then, spans still get their ids and
  // propagate, but are not sampled: nothing records what nobody exports (recording cost a
  // third of GetPipeline's throughput). A process downstream honours that decision.
  const exporting = spanProcessors.length > 0;
  if (!exporting) spanProcessors.push(new NoopSpanProcessor());
  const sdk = new NodeSDK({
    serviceName: options.serviceName,
    // Explicit processors: without them the SDK would default to an OTLP exporter on localhost.
    spanProcessors,
    ...(exporting ? {} : { sampler: new AlwaysOffSampler() }),
    metricReaders: [prometheus],
    instrumentations: [],
    autoDetectResources: false,
  });
  sdk.start();
  return {
    tracer: trace.getTracer("jobmesh"),
    meter: metrics.getMeter("jobmesh"),
    serveMetrics: (req, res) => prometheus.getMetricsRequestHandler(req, res),
    shutdown: () => sdk.shutdown(),
  };
}

/**
 * The outermost interceptor: one OTel server span per call, joined to the caller's trace through
 * the `traceparent` header and echoed back in the response headers (or error metadata), plus
 * the RPC duration histogram and call counts by status code.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { context, propagation, SpanKind, SpanStatusCode, trace, type TextMapGetter, type TextMapSetter } from "@opentelemetry/api";
import type { Telemetry } from "../telemetry/index.ts";
import { mapStream } from "./streams.ts";

export const headerGetter: TextMapGetter<Headers> = {
  keys: (h) => [...h.keys()],
  get: (h, key) => h.get(key) ?? undefined,
};
export const headerSetter: TextMapSetter<Headers> = {
  set: (h, key, value) => h.set(key, value),
};

function codeName(error: unknown): string {
  if (error === undefined) return "ok";
  return Code[ConnectError.from(error).code] ?? "unknown";
}

export function createTelemetryInterceptor(telemetry: Telemetry): Interceptor {
  const duration = telemetry.meter.createHistogram("rpc.server.duration", {
    description: "Duration of RPCs served, by service, method and status code",
    unit: "ms",
  });
  const calls = telemetry.meter.createCounter("rpc.server.calls", { description: "RPCs served, by status code" });

  return (next) => async (req) => {
    const service = req.method.parent.typeName;
    const method = req.method.name;
    const parent = propagation.extract(context.active(), req.header, headerGetter);
    const span = telemetry.tracer.startSpan(
      `${service}/${method}`,
      {
        kind: SpanKind.SERVER,
        attributes: { "rpc.system": "grpc", "rpc.service": service, "rpc.method": method },
      },
      parent,
    );
    const started = performance.now();
    const active = trace.setSpan(parent, span);
    const finish = (error?: unknown) => {
      const code = codeName(error);
      const attributes = { "rpc.service": service, "rpc.method": method, "rpc.grpc.status_code": code };
      duration.record(performance.now() - started, attributes);
      calls.add(1, attributes);
      span.setAttribute("rpc.grpc.status_code", code);
      if (error !== undefined) span.setStatus({ code: SpanStatusCode.ERROR, message: ConnectError.from(error).rawMessage });
      span.end();
    };

    return context.with(active, async () => {
      try {
        const res = await next(req);
        propagation.inject(active, res.header, headerSetter);
        if (!res.stream) {
          finish();
          return res;
        }
        // A streaming call ends when its stream does: the span and the metrics wait for that.
        let failed: unknown;
        return { ...res, message: mapStream(res.message, (m) => m, (e) => (failed = e), () => finish(failed)) };
      } catch (error) {
        if (error instanceof ConnectError) propagation.inject(active, error.metadata, headerSetter);
        finish(error);
        throw error;
      }
    });
  };
}

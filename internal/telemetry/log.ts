import { trace } from "@opentelemetry/api";
import { pino, type Logger } from "pino";

export type { Logger };

/**
 * Paths pino replaces with "[redacted]" wherever a caller logs them: credentials must never
 * reach the logs, even by accident.
 */
const secretPaths = [
  "password", "*.password", "token", "*.token", "secret", "*.secret", "authorization", "*.authorization",
  "headers.authorization", "headers.cookie", "refreshToken", "*.refreshToken", "apiKey", "*.apiKey",
];

/** A JSON logger whose every line carries the trace and span ids of the active span. */
export function createLogger(options: { name: string; level: string; destination?: pino.DestinationStream }): Logger {
  return pino(
    {
      name: options.name,
      level: options.level,
      redact: { paths: secretPaths, censor: "[redacted]" },
      mixin() {
        const span = trace.getActiveSpan();
        if (!span) return {};
        const { traceId, spanId } = span.spanContext();
        return { trace_id: traceId, span_id: spanId };
      },
    },
    options.destination,
  );
}

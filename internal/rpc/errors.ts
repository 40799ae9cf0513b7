/**
 * The one place where errors become gRPC status codes. Domain errors map by kind; anything
 * unexpected becomes INTERNAL with a generic message and the trace id, and its detail goes only
 * to the log.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { trace } from "@opentelemetry/api";
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";
import { type ErrorKind, type FieldViolation, isDomainError } from "../errors/index.ts";
import type { Logger } from "../telemetry/index.ts";
import { mapStream } from "./streams.ts";

const codeByKind: Record<ErrorKind, Code> = {
  invalid_argument: Code.InvalidArgument,
  not_found: Code.NotFound,
  already_exists: Code.AlreadyExists,
  aborted: Code.Aborted,
  failed_precondition: Code.FailedPrecondition,
  resource_exhausted: Code.ResourceExhausted,
  out_of_range: Code.OutOfRange,
  permission_denied: Code.PermissionDenied,
  unauthenticated: Code.Unauthenticated,
  unavailable: Code.Unavailable,
};

/** A google.rpc.BadRequest detail: the standard way gRPC clients read field violations. */
export function badRequestDetail(violations: FieldViolation[]) {
  return {
    desc: BadRequestSchema,
    value: create(BadRequestSchema, {
      fieldViolations: violations.map((v) => ({ field: v.field, description: v.description })),
    }),
  };
}

/** Converts anything thrown by a handler into the ConnectError the caller should see. */
export function toConnectError(error: unknown, log: Logger, procedure: string): ConnectError {
  if (error instanceof ConnectError) return error;
  if (isDomainError(error)) {
    const details = error.violations.length > 0 ? [badRequestDetail(error.violations)] : [];
    return new ConnectError(error.message, codeByKind[error.kind], undefined, details, error);
  }
  const traceId = trace.getActiveSpan()?.spanContext().traceId ?? "none";
  log.error({ err: error, procedure }, "unexpected error in handler");
  return new ConnectError(`internal error (trace ${traceId})`, Code.Internal, undefined, undefined, error);
}

/** Maps errors of unary calls and of streams, whichever side the error comes from. */
export function createErrorInterceptor(log: Logger): Interceptor {
  return (next) => async (req) => {
    const procedure = req.method.parent.typeName + "/" + req.method.name;
    try {
      const res = await next(req);
      if (!res.stream) return res;
      return { ...res, message: mapStream(res.message, (m) => m, (e) => toConnectError(e, log, procedure)) };
    } catch (error) {
      throw toConnectError(error, log, procedure);
    }
  };
}

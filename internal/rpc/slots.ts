/**
 * The interceptor chain of every server, as named slots in one fixed order, outermost first:
 *
 *   telemetry → errors → audit → identity → validate
 *
 * telemetry, errors and validate are built in; a server fills `audit` and `identity`. Audit wraps
 * identity, so a call identity refuses is still seen, with the caller it claimed to be
 * (attemptedCallerKey, recorded by identity before it decides).
 */
import { ConnectError, type Interceptor, type StreamRequest, type UnaryRequest } from "@connectrpc/connect";
import { mapStream } from "./streams.ts";

/** The slots a server fills. */
export interface InterceptorSlots {
  /** Observers of every call, refused ones included; empty until AuditService (issue 12). */
  audit?: Interceptor[];
  /** Who is calling and whether the method lets them in. */
  identity: Interceptor[];
}

/** The interceptors every server brings itself. */
export interface BuiltInInterceptors {
  telemetry: Interceptor;
  /** Maps any error to the ConnectError the caller gets; must pass a ConnectError through unchanged. */
  errors: Interceptor;
  validate: Interceptor;
}

/**
 * The chain in Connect's order (the first is outermost). With an audit slot, the error mapping
 * also runs right inside it: audit then records the code the caller gets, not a domain error,
 * while an error an audit interceptor throws itself is still mapped by the outer one. Mapping is
 * idempotent (a ConnectError passes through), so an unexpected error is logged once.
 */
export function chainOf(slots: InterceptorSlots, builtIn: BuiltInInterceptors): Interceptor[] {
  const audit = slots.audit ?? [];
  return [
    builtIn.telemetry,
    builtIn.errors,
    ...audit,
    ...(audit.length > 0 ? [builtIn.errors] : []),
    ...slots.identity,
    builtIn.validate,
  ];
}

/**
 * An interceptor that calls `onEnd` exactly once per call, when it is over: a unary answer or
 * error, or the end of a response stream (a server-streaming call is not over when its handler
 * returns). In the audit slot, `error` is already the ConnectError the caller gets, and
 * `req.contextValues` holds what identity recorded. `onEnd` cannot fail or delay the call: it is
 * not awaited, and what it throws is handed to `onFailure`.
 */
export function createCallEndInterceptor(
  onEnd: (req: UnaryRequest | StreamRequest, error: ConnectError | undefined) => void,
  onFailure: (error: unknown) => void = () => {},
): Interceptor {
  const end = (req: UnaryRequest | StreamRequest, error: unknown) => {
    try {
      onEnd(req, error === undefined ? undefined : ConnectError.from(error));
    } catch (failure) {
      onFailure(failure);
    }
  };
  return (next) => async (req) => {
    let res;
    try {
      res = await next(req);
    } catch (error) {
      end(req, error);
      throw error;
    }
    if (!res.stream) {
      end(req, undefined);
      return res;
    }
    let failed: unknown;
    return {
      ...res,
      message: mapStream(
        res.message,
        (m) => m,
        (e) => (failed = e),
        () => end(req, failed),
      ),
    };
  };
}

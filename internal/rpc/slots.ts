/**
 * The interceptor chain of every server, as named slots in one fixed order, outermost first:
 *
 *   telemetry → errors → audit → identity → validate
 *
 * telemetry, errors and validate are built in; a server fills `audit` and `identity`. Audit wraps
 * identity, so a call identity refuses is still seen, with the caller it claimed to be
 * (attemptedCallerKey, recorded by identity before it decides).
 */
import { Code, ConnectError, type Interceptor, type StreamRequest, type UnaryRequest } from "@connectrpc/connect";
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

/** What `onEnd` learns about a call besides its error. */
export interface CallEnd {
  /** The response message on success of a unary or client-streaming call (a create names what it made); undefined for a server stream or an error. */
  response: unknown;
  /** When the call entered the interceptor: `Date.now()` and `performance.now()` read together. */
  startTime: Date;
  startMs: number;
}

/**
 * An interceptor that calls `onEnd` exactly once per call, when it is over: a unary or
 * client-streaming call when its handler settles, with what the handler answered (a create the
 * client stopped waiting for still committed, and its record says so); a call with a response
 * stream at the end of that stream (it is not over when its handler returns). A response stream
 * the client abandons (the server stops reading it early, or the call's signal aborts: the client
 * went away or its deadline passed) ends as CANCELED, or DEADLINE_EXCEEDED when that is why; a
 * stream never read at all is caught by the signal. In the
 * audit slot, `error` is already the ConnectError the caller gets, and `req.contextValues` holds
 * what identity recorded. `onEnd` cannot fail or delay the call: it is not awaited, and what it
 * throws is handed to `onFailure`.
 */
export function createCallEndInterceptor(
  onEnd: (req: UnaryRequest | StreamRequest, error: ConnectError | undefined, end: CallEnd) => void,
  onFailure: (error: unknown) => void = () => {},
): Interceptor {
  return (next) => async (req) => {
    const startTime = new Date();
    const startMs = performance.now();
    let ended = false;
    const end = (error: unknown, response?: unknown) => {
      if (ended) return;
      ended = true;
      req.signal.removeEventListener("abort", onAbort);
      try {
        onEnd(req, error === undefined ? undefined : ConnectError.from(error), { response, startTime, startMs });
      } catch (failure) {
        onFailure(failure);
      }
    };
    // The backstop, for a response stream only: whatever happens to it (never read, read and
    // dropped), a call whose signal aborts before it ended is over, and the client did not get a
    // complete answer. A unary or client-streaming handler runs to its end whether or not the
    // client is still there, and what it did is what the record says.
    const onAbort = () => end(abandonment(req.signal));
    const streamsResponse = req.method.methodKind === "server_streaming" || req.method.methodKind === "bidi_streaming";
    if (streamsResponse && req.signal.aborted) {
      // Connect checks the signal itself; record the call as the client's abandonment anyway.
      queueMicrotask(onAbort);
    } else if (streamsResponse) {
      req.signal.addEventListener("abort", onAbort, { once: true });
    }

    let res;
    try {
      res = await next(req);
    } catch (error) {
      end(error);
      throw error;
    }
    if (!res.stream) {
      end(undefined, res.message);
      return res;
    }
    if (!streamsResponse) {
      // A client-streaming call's one answer, already made (Connect runs the handler inside
      // next): taken now, so the call is recorded as settled even if nobody reads it.
      const answer = await firstOf(res.message).catch((error: unknown) => ({ error }));
      if ("error" in answer) {
        end(answer.error);
        throw answer.error;
      }
      end(undefined, answer.value);
      return { ...res, message: replay(answer.value) };
    }
    let failed: unknown;
    let completed = false;
    return {
      ...res,
      message: mapStream(
        observeCompletion(res.message, () => (completed = true)),
        (m) => m,
        (e) => (failed = e),
        // Not completed and not failed: the reader stopped early (iterator return()).
        () => end(failed ?? (completed ? undefined : abandonment(req.signal))),
      ),
    };
  };
}

/** Why a call nobody finished reading ended: its deadline, or else the client went away. */
function abandonment(signal: AbortSignal): ConnectError {
  const reason: unknown = signal.aborted ? signal.reason : undefined;
  if (reason instanceof ConnectError && reason.code === Code.DeadlineExceeded) return reason;
  return new ConnectError("the client abandoned the call", Code.Canceled);
}

/** Passes `source` through and calls `onDone` when it ran to its end (not when it was stopped or failed). */
async function* observeCompletion<T>(source: AsyncIterable<T>, onDone: () => void): AsyncGenerator<T> {
  yield* source;
  onDone();
}

/** The first message of a stream (a client-streaming answer has exactly one; none is undefined). */
async function firstOf<T>(source: AsyncIterable<T>): Promise<{ value: T | undefined }> {
  for await (const value of source) return { value };
  return { value: undefined };
}

/** A stream of the one answer again (nothing when there was none). */
async function* replay<T>(value: T | undefined): AsyncGenerator<T> {
  if (value !== undefined) yield value;
}

/**
 * Server-streaming methods over plain HTTP: Server-Sent Events by default (what a browser's
 * EventSource and `curl -N` read), NDJSON when the client asks for it (grpc-gateway's shape, for
 * line-oriented tools). A stream whose messages carry an event sequence resumes where a dropped
 * connection left off: the SSE `id:` is that sequence, and the `Last-Event-ID` the client sends
 * back on reconnect becomes the request's `after_sequence`.
 */
import { ScalarType, type DescField, type DescMessage, type DescMethod, type JsonValue, type Message } from "@bufbuild/protobuf";
import { reflect, type ReflectMessage } from "@bufbuild/protobuf/reflect";
import { Code, ConnectError } from "@connectrpc/connect";

const sseMediaType = "text/event-stream";
const ndjsonMediaType = "application/x-ndjson";

/** True when the request asks for NDJSON (Accept: application/x-ndjson) rather than SSE (the default, text/event-stream). */
export function wantsNdjson(req: Request): boolean {
  const weights = acceptWeights(req.headers.get("accept") ?? "");
  const ndjson = weights.get(ndjsonMediaType);
  if (ndjson === undefined || ndjson === 0) return false;
  // Both listed: the higher weight wins, a tie goes to the one the client named specifically.
  return ndjson >= (weights.get(sseMediaType) ?? 0);
}

/** Media type → q-value, for the media types an Accept header names literally (wildcards do not choose a framing). */
function acceptWeights(accept: string): Map<string, number> {
  const weights = new Map<string, number>();
  for (const range of accept.split(",")) {
    const [type = "", ...params] = range.split(";").map((part) => part.trim().toLowerCase());
    if (!type) continue;
    const q = params.find((param) => param.startsWith("q="));
    const weight = q === undefined ? 1 : Number(q.slice(2));
    weights.set(type, Number.isFinite(weight) ? weight : 0);
  }
  return weights;
}

/** Where a stream's resume point lives: the request field it is sent back in, and the path to it in a response. */
export interface ResumeField {
  /** Proto name of the request's int64 field, e.g. "after_sequence". */
  requestField: string;
  /** Proto field names from the response message down to the sequence, e.g. ["event", "sequence"]. */
  responsePath: string[];
}

const int64Scalars = new Set([ScalarType.INT64, ScalarType.UINT64, ScalarType.SINT64, ScalarType.FIXED64, ScalarType.SFIXED64]);

function int64FieldOf(message: DescMessage, name: string): DescField | undefined {
  const field = message.fields.find((candidate) => candidate.name === name);
  return field?.fieldKind === "scalar" && int64Scalars.has(field.scalar) ? field : undefined;
}

/**
 * The resume point of a server stream, read from the descriptors: the request has an int64
 * `after_sequence` and the response an int64 `sequence`, at the top or in one of its message
 * fields (WatchJob: `event.sequence`). Undefined for a stream that cannot resume.
 */
export function resumeFieldOf(method: DescMethod): ResumeField | undefined {
  if (method.methodKind !== "server_streaming") return undefined;
  const requestField = int64FieldOf(method.input, "after_sequence");
  if (!requestField) return undefined;
  if (int64FieldOf(method.output, "sequence")) return { requestField: requestField.name, responsePath: ["sequence"] };
  for (const field of method.output.fields) {
    if (field.fieldKind === "message" && int64FieldOf(field.message, "sequence")) {
      return { requestField: requestField.name, responsePath: [field.name, "sequence"] };
    }
  }
  return undefined;
}

const int64Max = 2n ** 63n - 1n;

/**
 * Carries the client's resume point into the request: the `Last-Event-ID` header (what an
 * EventSource sends when it reconnects) or else the `lastEventId` query parameter (for clients
 * that cannot set headers). It replaces `after_sequence` only when it is further along, so a
 * reconnect never replays what the client already has. A value that is not a sequence is refused
 * rather than ignored: silently starting over would repeat every event.
 */
export function applyResume(req: Request, method: DescMethod, input: Message): void {
  const resume = resumeFieldOf(method);
  if (!resume) return;
  const header = req.headers.get("last-event-id");
  const [source, raw] = header ? ["header Last-Event-ID", header] : ["query parameter lastEventId", new URL(req.url).searchParams.get("lastEventId")];
  if (!raw) return;
  const sequence = /^\d{1,19}$/.test(raw.trim()) ? BigInt(raw.trim()) : undefined;
  if (sequence === undefined || sequence > int64Max) {
    throw new ConnectError(`${source} must be the sequence of the last event received (a non-negative integer), got ${JSON.stringify(raw.slice(0, 40))}`, Code.InvalidArgument);
  }
  const message = reflect(method.input, input);
  const field = message.fields.find((candidate) => candidate.name === resume.requestField)!;
  if (sequence > BigInt(String(message.get(field)))) message.set(field, sequence);
}

/** The resume sequence of one response message, as the SSE `id:`; undefined when the message does not carry one. */
function sequenceOf(resume: ResumeField, desc: DescMessage, message: Message): string | undefined {
  let current: ReflectMessage = reflect(desc, message);
  for (const [index, name] of resume.responsePath.entries()) {
    const field = current.fields.find((candidate) => candidate.name === name);
    if (!field || !current.isSet(field)) return undefined;
    if (index === resume.responsePath.length - 1) return String(current.get(field));
    current = current.get(field) as ReflectMessage;
  }
  return undefined;
}

export interface ServerStreamOptions {
  req: Request;
  method: DescMethod;
  messages: AsyncIterable<Message>;
  /** SSE comment sent after this long without a message, so proxies and clients keep an idle stream open. */
  heartbeatMs: number;
  /** Aborted when the client goes away, to stop the backend call. */
  abort: AbortController;
  toJson(message: Message): JsonValue;
  /** The HTTP status and google.rpc.Status JSON of a failure (http-errors.ts). */
  statusOf(error: unknown): { status: number; body: JsonValue };
}

/** How one framing writes a message, an error and the end of the stream. */
interface Framing {
  mediaType: string;
  message(json: JsonValue, id: string | undefined): string;
  error(status: JsonValue): string;
  end: string;
  heartbeat: string | undefined;
}

const sseFraming: Framing = {
  mediaType: sseMediaType,
  // JSON.stringify escapes every line break inside strings, so `data:` is always one line.
  message: (json, id) => `${id === undefined ? "" : `id: ${id}\n`}event: message\ndata: ${JSON.stringify(json)}\n\n`,
  error: (status) => `event: error\ndata: ${JSON.stringify(status)}\n\n`,
  // An EventSource reconnects whenever a stream closes; this tells a client the stream is
  // complete, so it can close() instead of reconnecting to a finished job.
  end: "event: end\ndata: {}\n\n",
  heartbeat: ": keep-alive\n\n",
};

const ndjsonFraming: Framing = {
  mediaType: ndjsonMediaType,
  message: (json) => `${JSON.stringify({ result: json })}\n`,
  error: (status) => `${JSON.stringify({ error: status })}\n`,
  end: "",
  // A blank line is not valid NDJSON for strict readers; NDJSON clients get no heartbeat.
  heartbeat: undefined,
};

const idle = Symbol("idle");

/** The next message, or `idle` when none came within `ms`. The pending next() stays usable after an idle. */
async function nextOrIdle<T>(pending: Promise<T>, ms: number): Promise<T | typeof idle> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<typeof idle>((resolve) => {
    timer = setTimeout(() => resolve(idle), ms);
  });
  try {
    return await Promise.race([pending, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Streams the messages as SSE or NDJSON (see wantsNdjson). SSE: one event per message (`id:` =
 * the resume sequence, `event: message`, `data:` proto3 JSON on one line), `: keep-alive` after
 * heartbeatMs without a message, `event: error` with the google.rpc.Status JSON when the backend
 * fails mid-stream, and `event: end` when the stream completes. NDJSON: `{"result": <message>}`
 * per line and `{"error": <Status>}` on failure. The backend is read only as fast as the client
 * reads, and no longer once the client goes away (the body's cancel aborts `abort`).
 */
export function serverStreamResponse(options: ServerStreamOptions): Response {
  const { method, heartbeatMs, abort } = options;
  const framing = wantsNdjson(options.req) ? ndjsonFraming : sseFraming;
  const resume = resumeFieldOf(method);
  const encoder = new TextEncoder();
  const iterator = options.messages[Symbol.asyncIterator]();
  // A next() survives a heartbeat: the message it brings is written on the following pull.
  let pending: Promise<IteratorResult<Message>> | undefined;
  let cancelled = false;

  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      pending ??= iterator.next();
      let result: IteratorResult<Message> | typeof idle;
      try {
        result = framing.heartbeat === undefined ? await pending : await nextOrIdle(pending, heartbeatMs);
      } catch (error) {
        if (cancelled) return;
        controller.enqueue(encoder.encode(framing.error(options.statusOf(error).body)));
        controller.close();
        return;
      }
      if (result === idle) {
        controller.enqueue(encoder.encode(framing.heartbeat!));
        return;
      }
      pending = undefined;
      if (result.done) {
        if (framing.end) controller.enqueue(encoder.encode(framing.end));
        controller.close();
        return;
      }
      const id = resume && sequenceOf(resume, method.output, result.value);
      controller.enqueue(encoder.encode(framing.message(options.toJson(result.value), id)));
    },
    cancel() {
      cancelled = true;
      abort.abort();
      // The abort ends the backend call; return() lets the iterator release what it holds.
      iterator.return?.()?.catch(() => undefined);
    },
  });

  return new Response(body, {
    status: 200,
    headers: {
      "content-type": framing.mediaType,
      "cache-control": "no-cache",
      // nginx and its kin buffer responses by default, which would hold events back.
      "x-accel-buffering": "no",
    },
  });
}

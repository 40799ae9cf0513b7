/**
 * Runs one stage of a job: takes what the earlier stages handed on (loaded with the claim), calls
 * the plain stage function with the pipeline's options and the attempt's AbortSignal, and says
 * what to commit. Detect, parse and enrich run in the stage pool's threads (stage-pool.ts); ingest
 * and output stay here: their work is I/O (fetch, object store) plus linear work on data this
 * thread already holds (a digest; serialising outputs it just parsed from Postgres), bounded by
 * the document size limit, and a hop to a thread would copy the same bytes once more.
 */
import { durationMs } from "@bufbuild/protobuf/wkt";
import type { ObjectStore } from "@nats-io/obj";
import { createHash } from "node:crypto";
import { SourceKind } from "../../gen/jobmesh/v1/jobs_pb.js";
import { Stage, type StageOptions } from "../../gen/jobmesh/v1/pipelines_pb.js";
import {
  configOf, resultNameOf, resultObjectJson, resultObjectKey, stageAt,
  type JobRow, type ResultSummary, type StageCompletion, type StageInputs, type StageTask,
} from "../jobs/lifecycle.ts";
import type { StagePool } from "./stage-pool.ts";
import {
  ingestStage, outputStage, PermanentStageError,
  type DetectResult, type EnrichResult, type IngestResult, type IngestSource, type ParsedDocument,
} from "../stages/index.ts";

export interface StageRunDeps {
  /** Runs detect, parse and enrich in threads. */
  pool: StagePool;
  uploads: ObjectStore;
  results: ObjectStore;
  maxDocumentBytes: number;
  /** How much a DOCX's or PDF's compressed parts may inflate to, in all (the parse stage's maxInflatedBytes). */
  maxInflatedBytes: number;
  allowLoopbackFetch: boolean;
  resultRetentionSeconds: number;
}

/**
 * The ingest result without its bytes, as stored for later stages; `originalKey` names the
 * object in the uploads bucket that holds a large original (see originalInlineLimit).
 */
type IngestMeta = Omit<IngestResult, "bytes"> & { originalKey?: string };

/**
 * Originals up to this size are kept in Postgres with the ingest output; larger ones in the
 * uploads object store bucket, so that a 50 MiB document is neither written into Postgres nor
 * read back from it by every claim of detect and parse.
 */
const originalInlineLimit = 256 * 1024;

/** The object of a large original: one per ingest attempt, so a stale attempt never overwrites the one its successor committed. */
const originalObjectKey = (task: StageTask) => `originals/${task.tenantId}/${task.jobId}/${task.stageIndex}-${task.attempt}`;

/** The key of the object that holds a stage output's original, if it names one. */
export function originalKeyOf(output: unknown): string | undefined {
  const key = (output as IngestMeta | null | undefined)?.originalKey;
  return typeof key === "string" ? key : undefined;
}

function need<T>(inputs: StageInputs, stage: Stage, what: string): T {
  if (!inputs.outputs.has(stage)) throw new PermanentStageError("invalid_source", `the pipeline has no ${Stage[stage].toLowerCase()} stage before ${what}`);
  return inputs.outputs.get(stage) as T;
}

/**
 * The document as ingest kept it: from the claim's row (small) or the uploads bucket (large).
 * The bytes are this attempt's own (a copy of the row's; getBlob assembles its chunks into a new
 * array), so they can be handed to a stage thread.
 */
async function ingestBytes(deps: StageRunDeps, inputs: StageInputs, what: string): Promise<Uint8Array> {
  const ingest = need<IngestMeta>(inputs, Stage.INGEST, what);
  if (inputs.ingestBytes) return new Uint8Array(inputs.ingestBytes);
  const kept = ingest.originalKey ? await deps.uploads.getBlob(ingest.originalKey) : null;
  if (!kept) throw new PermanentStageError("invalid_source", "the ingested document is missing");
  return kept;
}

function optionsOf(options: StageOptions | undefined) {
  return options?.options ?? { case: undefined };
}

function ingestSource(row: JobRow, inputs: StageInputs, uploads: ObjectStore): IngestSource {
  const meta = { filename: row.filename || undefined, mediaTypeHint: row.media_type_hint || undefined };
  switch (row.source_kind) {
    case SourceKind.URL:
      return { kind: "url", url: row.source_url! };
    case SourceKind.UPLOAD:
      return {
        kind: "bytes-provider",
        ...meta,
        async read() {
          const bytes = await uploads.getBlob(row.source_upload!);
          if (!bytes) throw new PermanentStageError("invalid_source", "the uploaded document no longer exists");
          return bytes;
        },
      };
    default:
      if (inputs.sourceContent) return { kind: "inline", bytes: new Uint8Array(inputs.sourceContent), ...meta };
      return { kind: "text", text: inputs.sourceText ?? "", ...meta };
  }
}

/**
 * Runs the task's stage; throws stage errors (or the signal's reason) as the stage does, or
 * StageThreadLost when the stage's thread died. `onThreadStart` is called when a stage that runs
 * in the pool begins in its thread.
 */
export async function runStage(deps: StageRunDeps, row: JobRow, task: StageTask, inputs: StageInputs, signal: AbortSignal, onThreadStart?: () => void): Promise<StageCompletion> {
  const stage = stageAt(row, task.stageIndex);
  const options = optionsOf(configOf(row).stages[task.stageIndex]?.options);
  const ctx = { signal };
  switch (stage) {
    case Stage.INGEST: {
      const o = options.case === "ingest" ? options.value : undefined;
      const maxBytes = Math.min(deps.maxDocumentBytes, Number(o?.maxBytes ?? 0n) || deps.maxDocumentBytes);
      const source = ingestSource(row, inputs, deps.uploads);
      const result = await ingestStage(source, { maxBytes, fetchTimeoutMs: o?.fetchTimeout ? durationMs(o.fetchTimeout) : undefined }, {
        ...ctx,
        fetchPolicy: { allowLoopback: deps.allowLoopbackFetch },
      });
      const { bytes, ...meta } = result;
      const patch = { size_bytes: result.size, sha256: result.sha256 };
      if (bytes.byteLength <= originalInlineLimit) return { output: meta, bytes, patch };
      const originalKey = originalObjectKey(task);
      await deps.uploads.putBlob({ name: originalKey }, bytes);
      return { output: { ...meta, originalKey }, patch };
    }
    case Stage.DETECT: {
      const ingest = need<IngestMeta>(inputs, Stage.INGEST, "detect");
      const o = options.case === "detect" ? options.value : undefined;
      const input = { bytes: await ingestBytes(deps, inputs, "detect"), filename: ingest.filename, mediaTypeHint: ingest.mediaTypeHint };
      const result = await deps.pool.run({ stage: "detect", input, options: { skipLanguage: o?.skipLanguage } }, signal, onThreadStart);
      return { output: result, patch: { detected_media_type: result.mediaType } };
    }
    case Stage.PARSE: {
      const bytes = await ingestBytes(deps, inputs, "parse");
      const detect = need<DetectResult>(inputs, Stage.DETECT, "parse");
      const o = options.case === "parse" ? options.value : undefined;
      const parsed = await deps.pool.run({ stage: "parse", input: { bytes, ...detect }, options: { maxPages: o?.maxPages, allowedMediaTypes: o?.allowedMediaTypes, maxInflatedBytes: deps.maxInflatedBytes } }, signal, onThreadStart);
      return { output: parsed };
    }
    case Stage.ENRICH: {
      const parsed = need<ParsedDocument>(inputs, Stage.PARSE, "enrich");
      const detect = inputs.outputs.get(Stage.DETECT) as DetectResult | undefined;
      const o = options.case === "enrich" ? options.value : undefined;
      // For plain text, detect identified the language of the text enrich reads: keep it.
      const textLanguage = detect?.mediaType === "text/plain" ? detect.language : undefined;
      const enrichOptions = {
        keywordCount: o?.keywordCount || undefined,
        summarySentences: o?.summarySentences || undefined,
        detectPii: o?.detectPii,
        redactPii: o?.redactPii,
      };
      const enriched = await deps.pool.run({ stage: "enrich", input: { ...parsed, language: detect?.language, textLanguage }, options: enrichOptions }, signal, onThreadStart);
      return { output: enriched };
    }
    case Stage.OUTPUT:
      return runOutput(deps, task, inputs, options.case === "output" ? options.value : undefined, signal);
    default:
      throw new PermanentStageError("invalid_source", `stage ${Stage[stage]} is not known to this worker`);
  }
}

async function runOutput(deps: StageRunDeps, task: StageTask, inputs: StageInputs, o: { includeText: boolean; resultRetention?: Parameters<typeof durationMs>[0] } | undefined, signal: AbortSignal): Promise<StageCompletion> {
  const ingest = need<IngestMeta>(inputs, Stage.INGEST, "output");
  // Detect and parse are optional: [ingest, output] stores and fingerprints a document as is.
  const detect = inputs.outputs.get(Stage.DETECT) as DetectResult | undefined;
  const parse = inputs.outputs.get(Stage.PARSE) as ParsedDocument | undefined;
  const enrich = inputs.outputs.get(Stage.ENRICH) as EnrichResult | undefined;
  const out = await outputStage(
    { ingest, detect, parse, enrich },
    { includeText: o?.includeText, resultRetentionMs: o?.resultRetention ? durationMs(o.resultRetention) : undefined },
    { signal },
  );
  const { text: _text, structure: _structure, ...rest } = out.result;
  const summary: ResultSummary = { ...rest, piiRedacted: enrich?.redactedText !== undefined };
  // Inline, the document is kept and GetJobResult maps it; an object is only ever streamed by
  // DownloadJobResult, so it is stored in the form the contract gives: JobResult JSON.
  const stored = out.storeInline ? out.json : resultObjectJson(resultNameOf(task.jobId), summary, out.result);
  const sha256 = createHash("sha256").update(stored).digest("hex");
  const expireTime = new Date(Date.now() + (out.resultRetentionMs ?? deps.resultRetentionSeconds * 1000));
  let objectKey: string | undefined;
  if (!out.storeInline) {
    // Written before the commit: a commit that then loses the fence leaves an object that the
    // winning attempt overwrites with the same key (and the same bytes: nothing in them is
    // particular to the attempt).
    objectKey = resultObjectKey(task.tenantId, task.jobId);
    await deps.results.putBlob({ name: objectKey }, stored);
  }
  signal.throwIfAborted();
  return {
    output: { size: stored.byteLength, sha256, objectKey: objectKey ?? null },
    result: { summary, inlineJson: out.storeInline ? out.json : undefined, objectKey, size: stored.byteLength, sha256, expireTime },
  };
}

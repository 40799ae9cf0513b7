/**
 * Runs one stage of a job: loads what the earlier stages handed on, calls the plain stage
 * function with the pipeline's options and the attempt's AbortSignal, and says what to commit.
 */
import { durationMs } from "@bufbuild/protobuf/wkt";
import type { ObjectStore } from "@nats-io/obj";
import { createHash } from "node:crypto";
import { SourceKind } from "../../gen/jobmesh/v1/jobs_pb.js";
import { Stage, type StageOptions } from "../../gen/jobmesh/v1/pipelines_pb.js";
import type { Queryable } from "../db/index.ts";
import type { StageTask } from "../jobs/outbox.ts";
import { insertResult, resultObjectKey, type ResultSummary } from "../jobs/results.ts";
import { configOf, stageAt, type JobRow } from "../jobs/store.ts";
import type { StageCompletion } from "../jobs/transitions.ts";
import {
  detectStage, enrichStage, ingestStage, outputStage, parseStage, PermanentStageError,
  type DetectResult, type EnrichResult, type IngestResult, type IngestSource, type ParsedDocument,
} from "../stages/index.ts";

export interface StageRunDeps {
  db: Queryable;
  uploads: ObjectStore;
  results: ObjectStore;
  maxDocumentBytes: number;
  allowLoopbackFetch: boolean;
  resultRetentionSeconds: number;
}

/** The ingest result without its bytes, as stored for later stages. */
type IngestMeta = Omit<IngestResult, "bytes">;

async function loadOutputs(db: Queryable, task: StageTask, stages: Stage[]) {
  const { rows } = await db.query<{ stage: Stage; output: unknown; bytes: Buffer | null }>(
    "SELECT stage, output, bytes FROM stage_outputs WHERE tenant_id = $1 AND job_id = $2 AND stage = ANY($3::smallint[])",
    [task.tenantId, task.jobId, stages],
  );
  return new Map(rows.map((r) => [r.stage, r]));
}

function need<T>(outputs: Awaited<ReturnType<typeof loadOutputs>>, stage: Stage, what: string): { output: T; bytes: Buffer | null } {
  const row = outputs.get(stage);
  if (!row) throw new PermanentStageError("invalid_source", `the pipeline has no ${Stage[stage].toLowerCase()} stage before ${what}`);
  return { output: row.output as T, bytes: row.bytes };
}

function optionsOf(options: StageOptions | undefined) {
  return options?.options ?? { case: undefined };
}

async function ingestSource(db: Queryable, row: JobRow, uploads: ObjectStore): Promise<IngestSource> {
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
    default: {
      const { rows } = await db.query<{ source_content: Buffer | null; source_text: string | null }>(
        "SELECT source_content, source_text FROM jobs WHERE tenant_id = $1 AND id = $2",
        [row.tenant_id, row.id],
      );
      const source = rows[0];
      if (source?.source_content) return { kind: "inline", bytes: new Uint8Array(source.source_content), ...meta };
      return { kind: "text", text: source?.source_text ?? "", ...meta };
    }
  }
}

/** Runs the task's stage; throws stage errors (or the signal's reason) as the stage does. */
export async function runStage(deps: StageRunDeps, row: JobRow, task: StageTask, signal: AbortSignal): Promise<StageCompletion> {
  const stage = stageAt(row, task.stageIndex);
  const options = optionsOf(configOf(row).stages[task.stageIndex]?.options);
  const ctx = { signal };
  switch (stage) {
    case Stage.INGEST: {
      const o = options.case === "ingest" ? options.value : undefined;
      const maxBytes = Math.min(deps.maxDocumentBytes, Number(o?.maxBytes ?? 0n) || deps.maxDocumentBytes);
      const source = await ingestSource(deps.db, row, deps.uploads);
      const result = await ingestStage(source, { maxBytes, fetchTimeoutMs: o?.fetchTimeout ? durationMs(o.fetchTimeout) : undefined }, {
        ...ctx,
        fetchPolicy: { allowLoopback: deps.allowLoopbackFetch },
      });
      const { bytes, ...meta } = result;
      return { output: meta, bytes, patch: { size_bytes: result.size, sha256: result.sha256 } };
    }
    case Stage.DETECT: {
      const outputs = await loadOutputs(deps.db, task, [Stage.INGEST]);
      const ingest = need<IngestMeta>(outputs, Stage.INGEST, "detect");
      const o = options.case === "detect" ? options.value : undefined;
      const result = await detectStage({ bytes: new Uint8Array(ingest.bytes!), filename: ingest.output.filename, mediaTypeHint: ingest.output.mediaTypeHint }, { skipLanguage: o?.skipLanguage }, ctx);
      return { output: result, patch: { detected_media_type: result.mediaType } };
    }
    case Stage.PARSE: {
      const outputs = await loadOutputs(deps.db, task, [Stage.INGEST, Stage.DETECT]);
      const ingest = need<IngestMeta>(outputs, Stage.INGEST, "parse");
      const detect = need<DetectResult>(outputs, Stage.DETECT, "parse");
      const o = options.case === "parse" ? options.value : undefined;
      const parsed = await parseStage({ bytes: new Uint8Array(ingest.bytes!), ...detect.output }, { maxPages: o?.maxPages, allowedMediaTypes: o?.allowedMediaTypes }, ctx);
      return { output: parsed };
    }
    case Stage.ENRICH: {
      const outputs = await loadOutputs(deps.db, task, [Stage.DETECT, Stage.PARSE]);
      const parsed = need<ParsedDocument>(outputs, Stage.PARSE, "enrich");
      const detect = outputs.get(Stage.DETECT)?.output as DetectResult | undefined;
      const o = options.case === "enrich" ? options.value : undefined;
      const enriched = await enrichStage({ ...parsed.output, language: detect?.language }, {
        keywordCount: o?.keywordCount || undefined,
        summarySentences: o?.summarySentences || undefined,
        detectPii: o?.detectPii,
        redactPii: o?.redactPii,
      }, ctx);
      return { output: enriched };
    }
    case Stage.OUTPUT:
      return runOutput(deps, row, task, options.case === "output" ? options.value : undefined, signal);
    default:
      throw new PermanentStageError("invalid_source", `stage ${Stage[stage]} is not known to this worker`);
  }
}

async function runOutput(deps: StageRunDeps, row: JobRow, task: StageTask, o: { includeText: boolean; resultRetention?: Parameters<typeof durationMs>[0] } | undefined, signal: AbortSignal): Promise<StageCompletion> {
  const outputs = await loadOutputs(deps.db, task, [Stage.INGEST, Stage.DETECT, Stage.PARSE, Stage.ENRICH]);
  const ingest = need<IngestMeta>(outputs, Stage.INGEST, "output");
  // Detect and parse are optional: [ingest, output] stores and fingerprints a document as is.
  const detect = outputs.get(Stage.DETECT)?.output as DetectResult | undefined;
  const parse = outputs.get(Stage.PARSE)?.output as ParsedDocument | undefined;
  const enrich = outputs.get(Stage.ENRICH)?.output as EnrichResult | undefined;
  const out = await outputStage(
    { ingest: ingest.output, detect, parse, enrich },
    { includeText: o?.includeText, resultRetentionMs: o?.resultRetention ? durationMs(o.resultRetention) : undefined },
    { signal },
  );
  const { text: _text, structure: _structure, ...rest } = out.result;
  const summary: ResultSummary = { ...rest, piiRedacted: enrich?.redactedText !== undefined };
  const sha256 = createHash("sha256").update(out.json).digest("hex");
  const expireTime = new Date(Date.now() + (out.resultRetentionMs ?? deps.resultRetentionSeconds * 1000));
  let objectKey: string | undefined;
  if (!out.storeInline) {
    // Written before the commit: a commit that then loses the fence leaves an object that the
    // winning attempt overwrites with the same key.
    objectKey = resultObjectKey(task.tenantId, task.jobId);
    await deps.results.putBlob({ name: objectKey }, out.json);
  }
  signal.throwIfAborted();
  return {
    output: { size: out.jsonSize, sha256, objectKey: objectKey ?? null },
    async storeResult(tx) {
      await insertResult(tx, task.tenantId, task.jobId, {
        summary, inlineJson: out.storeInline ? out.json : undefined, objectKey, size: out.jsonSize, sha256, expireTime,
      });
      return { expireTime };
    },
  };
}

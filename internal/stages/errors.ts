/**
 * Named errors of the document stages. A stage throws only these (or the AbortSignal's reason
 * when it was cancelled); the worker decides retry versus fail from the class alone.
 */

/** Stable machine-readable reasons a stage fails. */
export type StageErrorCode =
  | "unsupported_media_type"
  | "media_type_not_allowed"
  | "corrupt_document"
  | "encrypted_document"
  | "document_too_large"
  | "invalid_source"
  | "ssrf_blocked"
  | "too_many_redirects"
  | "fetch_rejected"
  | "fetch_failed"
  | "fetch_timeout";

/** Base of both stage error kinds; `code` is stable, `message` safe to show a client. */
export abstract class StageError extends Error {
  readonly code: StageErrorCode;
  abstract readonly retryable: boolean;

  constructor(code: StageErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** Bad, unsupported or corrupt input: retrying cannot help, fail the job now. */
export class PermanentStageError extends StageError {
  override readonly name = "PermanentStageError";
  readonly retryable = false;
}

/** A network blip, an upstream 5xx or a timeout: the same attempt may succeed later. */
export class TransientStageError extends StageError {
  override readonly name = "TransientStageError";
  readonly retryable = true;
}

/** The error of a document whose compressed parts (zip entries, PDF streams) inflate past the limit. */
export function inflatedTooLarge(maxBytes: number): PermanentStageError {
  return new PermanentStageError("document_too_large", `the document decompresses to more than ${maxBytes} bytes`);
}

/** True for either kind of stage error. */
export function isStageError(err: unknown): err is StageError {
  return err instanceof StageError;
}

/** Finds the first stage error in an error's `cause` chain (libraries wrap what we throw). */
export function findStageError(err: unknown): StageError | undefined {
  for (let e = err, depth = 0; e != null && depth < 8; depth++) {
    if (e instanceof StageError) return e;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

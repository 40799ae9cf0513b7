import { AlreadyExistsError, ConflictError, FailedPreconditionError, InvalidArgumentError, NotFoundError, OutOfRangeError, ResourceExhaustedError } from "../errors/index.ts";

export class JobNotFoundError extends NotFoundError {
  constructor(name: string) {
    super(`job ${name} not found`);
  }
}

export class UploadNotFoundError extends NotFoundError {
  constructor(name: string) {
    super(`upload ${name} not found or expired`);
  }
}

/** The request_id was used before with a different request body. */
export class JobRequestIdReusedError extends AlreadyExistsError {
  constructor(requestId: string, existing: string) {
    super(`request_id ${requestId} was already used for a different request (${existing})`);
  }
}

/** The job is in a state that does not allow the operation. */
export class JobStateError extends FailedPreconditionError {}

export class ResultNotFoundError extends NotFoundError {
  constructor(name: string, why = "the job has not succeeded, or its result expired") {
    super(`result ${name} not found: ${why}`);
  }
}

export class DocumentTooLargeError extends ResourceExhaustedError {
  constructor(size: number, limit: number) {
    super(`document of ${size} bytes exceeds the limit of ${limit} bytes`);
  }
}

/** A URL whose literal address is private, loopback, link-local or otherwise not public. */
export class ForbiddenUrlError extends FailedPreconditionError {
  constructor(host: string) {
    super(`refusing document URL: ${host} is not a public address`);
  }
}

export class PipelineUnavailableError extends FailedPreconditionError {}

export class StaleJobEtagError extends ConflictError {
  constructor(name: string) {
    super(`etag does not match the current version of ${name}; read it again and retry`);
  }
}

export class InvalidJobRequestError extends InvalidArgumentError {}

/** A download offset beyond the end of the result: OUT_OF_RANGE, as the contract says. */
export class OffsetOutOfRangeError extends OutOfRangeError {
  constructor(offset: bigint, size: bigint) {
    super(`offset ${offset} is past the end of the result (${size} bytes)`);
  }
}

/** A caller holds as many open WatchJob streams as it may (JOBMESH_MAX_WATCH_STREAMS_PER_CALLER). */
export class WatchStreamLimitError extends ResourceExhaustedError {
  constructor(limit: number) {
    super(`too many open WatchJob streams: at most ${limit} per caller (JOBMESH_MAX_WATCH_STREAMS_PER_CALLER); close one first`);
  }
}

/** A tenant's uploads and results would hold more than its storage quota. */
export class StorageQuotaExceededError extends ResourceExhaustedError {
  constructor(quota: number, used: number, adding: number) {
    super(
      `storage quota exceeded: the tenant holds ${used} bytes in uploads and results of its quota of ${quota} bytes ` +
        `(JOBMESH_TENANT_STORAGE_QUOTA_BYTES or the tenant's own) and this needs ${adding} more; delete jobs or uploads to free space`,
    );
  }
}

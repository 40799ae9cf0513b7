import { AlreadyExistsError, ConflictError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../errors/index.ts";

export class PipelineNotFoundError extends NotFoundError {
  constructor(name: string, version?: number) {
    super(version ? `pipeline ${name} has no version ${version}` : `pipeline ${name} not found`);
  }
}

export class PipelineExistsError extends AlreadyExistsError {
  constructor(name: string) {
    super(`pipeline ${name} already exists`);
  }
}

/** The request_id was used before for a different pipeline. */
export class RequestIdReusedError extends AlreadyExistsError {
  constructor(requestId: string, existing: string) {
    super(`request_id ${requestId} was already used to create ${existing}`);
  }
}

export class StaleEtagError extends ConflictError {
  constructor(name: string) {
    super(`etag does not match the current version of ${name}; read it again and retry`);
  }
}

export class PipelineDeletedError extends FailedPreconditionError {
  constructor(name: string) {
    super(`pipeline ${name} is deleted`);
  }
}

export class BuiltInPipelineError extends FailedPreconditionError {
  constructor(name: string) {
    super(`pipeline ${name} is built in and cannot be changed or deleted`);
  }
}

export class InvalidPipelineConfigError extends InvalidArgumentError {}

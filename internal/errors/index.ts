/**
 * Named errors the domain throws. They know nothing of the transport: internal/rpc maps each
 * kind to a canonical gRPC code in one place. The message is safe to show to the caller; the
 * internal detail belongs in `cause`, which only the logs see.
 */

/** The canonical outcomes a domain error can stand for. */
export type ErrorKind =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "aborted"
  | "failed_precondition"
  | "resource_exhausted"
  | "out_of_range"
  | "permission_denied"
  | "unauthenticated"
  | "unavailable";

/** A field-level problem, returned to callers as a google.rpc.BadRequest field violation. */
export interface FieldViolation {
  field: string;
  description: string;
}

export abstract class DomainError extends Error {
  abstract readonly kind: ErrorKind;
  /** Field violations, for invalid_argument errors found by domain rules. */
  readonly violations: FieldViolation[];
  constructor(message: string, options?: { cause?: unknown; violations?: FieldViolation[] }) {
    super(message, { cause: options?.cause });
    this.name = new.target.name;
    this.violations = options?.violations ?? [];
  }
}

export class InvalidArgumentError extends DomainError {
  readonly kind = "invalid_argument";
}
export class NotFoundError extends DomainError {
  readonly kind = "not_found";
}
export class AlreadyExistsError extends DomainError {
  readonly kind = "already_exists";
}
/** A concurrency conflict, such as a stale etag: re-read and try again. */
export class ConflictError extends DomainError {
  readonly kind = "aborted";
}
export class FailedPreconditionError extends DomainError {
  readonly kind = "failed_precondition";
}
export class ResourceExhaustedError extends DomainError {
  readonly kind = "resource_exhausted";
}
/** A position past the end of what there is, such as a download offset past the end of a result. */
export class OutOfRangeError extends DomainError {
  readonly kind = "out_of_range";
}
export class UnavailableError extends DomainError {
  readonly kind = "unavailable";
}
/** The caller is not known: no credentials, or credentials that do not verify. */
export class UnauthenticatedError extends DomainError {
  readonly kind = "unauthenticated";
}
/** The caller is known but its roles do not grant what it asked for. */
export class PermissionDeniedError extends DomainError {
  readonly kind = "permission_denied";
}

export function isDomainError(error: unknown): error is DomainError {
  return error instanceof DomainError;
}

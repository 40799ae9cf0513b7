/**
 * Named errors of the audit domain. internal/rpc/errors.ts maps them by kind: a bad filter is
 * INVALID_ARGUMENT naming the term, an unknown (or another tenant's) event is NOT_FOUND.
 */
import { InvalidArgumentError, NotFoundError } from "../errors/index.ts";

/** No event of this id in the caller's tenant (another tenant's event is not found either). */
export class AuditEventNotFoundError extends NotFoundError {
  constructor(name: string) {
    super(`audit event ${name} not found`);
  }
}

/** One term of a ListAuditEvents filter that cannot be read or is not supported. */
export class InvalidAuditFilterError extends InvalidArgumentError {
  readonly term: string;
  constructor(term: string, why: string) {
    super(`filter term ${JSON.stringify(term)} is invalid: ${why}`, { violations: [{ field: "filter", description: `${JSON.stringify(term)}: ${why}` }] });
    this.term = term;
  }
}


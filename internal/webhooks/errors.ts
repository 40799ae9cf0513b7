/**
 * Named errors of the webhooks domain. internal/rpc/errors.ts maps them by kind: a refused URL or
 * a bad filter is INVALID_ARGUMENT naming the field, an unknown (or another tenant's) subscription
 * or delivery is NOT_FOUND, a stale etag is ABORTED.
 */
import { ConflictError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from "../errors/index.ts";

/** No subscription of this name in the caller's tenant (another tenant's is not found either). */
export class WebhookNotFoundError extends NotFoundError {
  constructor(name: string) {
    super(`webhook ${name} not found`);
  }
}

/** No delivery of this name under the subscription, in the caller's tenant. */
export class WebhookDeliveryNotFoundError extends NotFoundError {
  constructor(name: string) {
    super(`webhook delivery ${name} not found`);
  }
}

/** The etag given is not the subscription's current one: someone changed it since it was read. */
export class StaleWebhookEtagError extends ConflictError {
  constructor(name: string) {
    super(`etag does not match the current version of ${name}; read it again and retry`);
  }
}

/**
 * The URL may not be subscribed: not https (unless http is allowed), userinfo, or an address
 * that is private, loopback, link-local or metadata. The reason is the network policy's own
 * words; they name no internal detail beyond the URL the caller gave.
 */
export class WebhookUrlRefusedError extends InvalidArgumentError {
  readonly field: string;
  readonly reason: string;
  constructor(field: string, reason: string, cause?: unknown) {
    super(`${field} is refused: ${reason}`, { cause, violations: [{ field, description: reason }] });
    this.field = field;
    this.reason = reason;
  }
}

/** A field of a request that the domain's rules refuse (protovalidate checked the shape). */
export class InvalidWebhookArgumentError extends InvalidArgumentError {
  constructor(field: string, why: string) {
    super(`${field} is invalid: ${why}`, { violations: [{ field, description: why }] });
  }
}

/** TestWebhook in a process whose delivery engine cannot send (it is not wired in). */
export class WebhookTestUnavailableError extends FailedPreconditionError {
  constructor() {
    super("TestWebhook is not available in this process: the delivery engine is not running");
  }
}

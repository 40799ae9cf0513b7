import {
  AlreadyExistsError,
  ConflictError,
  FailedPreconditionError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnauthenticatedError,
} from "../errors/index.ts";

/**
 * Wrong email, wrong password, disabled user, an email in several tenants with none named: one
 * error, one message, so none can be told apart.
 */
export class InvalidCredentialsError extends UnauthenticatedError {
  constructor() {
    super("invalid email or password (if the email has accounts in several tenants, name the tenant)");
  }
}

/** A token or key that is missing, malformed, expired, revoked or signed by someone else. */
export class InvalidTokenError extends UnauthenticatedError {
  constructor(what: string, options?: { cause?: unknown }) {
    super(`${what} is invalid or expired`, options);
  }
}

export class NoCredentialsError extends UnauthenticatedError {
  constructor() {
    super('this method needs credentials: send "authorization: Bearer <token>" or "x-api-key: jmk_..."');
  }
}

export class MissingPermissionError extends PermissionDeniedError {
  constructor(permission: string) {
    super(`the caller's roles do not grant ${permission}`);
  }
}

/** Too many login attempts; the caller may try again after `retryAfterSeconds`. */
export class TooManyLoginAttemptsError extends ResourceExhaustedError {
  readonly retryAfterSeconds: number;
  constructor(retryAfterSeconds: number) {
    super(`too many login attempts; retry in ${retryAfterSeconds} s`);
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

export class UserNotFoundError extends NotFoundError {
  constructor(name: string) {
    super(`user ${name} not found`);
  }
}

export class UserExistsError extends AlreadyExistsError {
  constructor(email: string) {
    super(`a user with email ${email} already exists in this tenant`);
  }
}

export class ApiKeyNotFoundError extends NotFoundError {
  constructor(name: string) {
    super(`API key ${name} not found`);
  }
}

export class StaleUserEtagError extends ConflictError {
  constructor(name: string) {
    super(`etag does not match the current version of ${name}; read it again and retry`);
  }
}

export class RolesExceedCreatorError extends PermissionDeniedError {
  constructor() {
    super("an API key cannot have a role above its creator's");
  }
}

export class NotAUserError extends FailedPreconditionError {
  constructor(what: string) {
    super(`${what} is for users signed in with a password`);
  }
}

/** ChangePassword with a current password that does not match: the caller is signed in, so not UNAUTHENTICATED. */
export class WrongCurrentPasswordError extends PermissionDeniedError {
  constructor() {
    super("the current password is wrong");
  }
}

/**
 * Request validation with protovalidate through the official Connect interceptor. We add a
 * google.rpc.BadRequest detail beside its buf.validate.Violations detail, so clients that only
 * know the standard error model (most gRPC clients) see which field broke which rule.
 */
import { pathToString } from "@bufbuild/protobuf/reflect";
import { createValidator, ValidationError, violationsToProto, type Validator } from "@bufbuild/protovalidate";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { createValidateInterceptor } from "@connectrpc/validate";
import type { FieldViolation } from "../errors/index.ts";
import { badRequestDetail } from "./errors.ts";

/** Readable field violations of a protovalidate error: "pipeline_id", "does not match ...". */
export function fieldViolationsOf(error: ValidationError): FieldViolation[] {
  return error.violations.map((v) => ({
    field: pathToString(v.field) || "(message)",
    description: `${v.message} [${v.ruleId}]`,
  }));
}

export function createValidationInterceptor(validator: Validator = createValidator()): Interceptor {
  const validate = createValidateInterceptor({ validator });
  return (next) => {
    const validated = validate(next);
    return async (req) => {
      try {
        return await validated(req);
      } catch (error) {
        // Only the validator's own errors are rewritten; a handler's errors pass untouched.
        if (error instanceof ConnectError && error.code === Code.InvalidArgument && error.cause instanceof ValidationError) {
          const violations = fieldViolationsOf(error.cause);
          const message = "invalid request: " + violations.map((v) => `${v.field}: ${v.description}`).join("; ");
          const [value, desc] = violationsToProto(error.cause.violations);
          throw new ConnectError(message, Code.InvalidArgument, undefined, [{ desc, value }, badRequestDetail(violations)], error.cause);
        }
        throw error;
      }
    };
  };
}

/**
 * The one table from gRPC codes to HTTP statuses, and the error body every REST answer uses:
 * a google.rpc.Status in proto3 JSON (`{"code": 3, "message": "...", "details": [...]}`), its
 * details as Any JSON decoded with the mesh's registry.
 */
import { create, fromBinary, toJson, type DescMessage, type JsonObject, type JsonValue, type Message } from "@bufbuild/protobuf";
import { anyPack, AnySchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { meshRegistry } from "../contract/index.ts";
// @deno-types="../../gen/google/rpc/error_details_pb.d.ts"
import { BadRequestSchema } from "../../gen/google/rpc/error_details_pb.js";

/** HTTP status by gRPC code, as in google/rpc/code.proto's HTTP mapping (CANCELLED: nginx's 499). */
export const httpStatusByCode: Readonly<Record<Code, number>> = {
  [Code.Canceled]: 499,
  [Code.Unknown]: 500,
  [Code.InvalidArgument]: 400,
  [Code.DeadlineExceeded]: 504,
  [Code.NotFound]: 404,
  [Code.AlreadyExists]: 409,
  [Code.PermissionDenied]: 403,
  [Code.ResourceExhausted]: 429,
  [Code.FailedPrecondition]: 400,
  [Code.Aborted]: 409,
  [Code.OutOfRange]: 400,
  [Code.Unimplemented]: 501,
  [Code.Internal]: 500,
  [Code.Unavailable]: 503,
  [Code.DataLoss]: 500,
  [Code.Unauthenticated]: 401,
};

/** A request body over its limit: RESOURCE_EXHAUSTED for gRPC, but 413 over HTTP, not 429. */
export class BodyTooLargeError extends ConnectError {
  readonly limitBytes: number;

  constructor(limitBytes: number, what: string) {
    super(`${what} is larger than the limit of ${limitBytes} bytes`, Code.ResourceExhausted);
    this.limitBytes = limitBytes;
  }

  // ConnectError's own instanceof accepts any ConnectError-shaped value, so a subclass must
  // restore the prototype check or every RESOURCE_EXHAUSTED would pass for a 413.
  static override [Symbol.hasInstance](value: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }
}

/** A ConnectError as it is; anything else is INTERNAL "internal error", its cause kept for the log only. */
export function toGatewayError(error: unknown): ConnectError {
  if (error instanceof ConnectError) return error;
  return new ConnectError("internal error", Code.Internal, undefined, undefined, error);
}

export function httpStatusOf(error: ConnectError): number {
  if (error instanceof BodyTooLargeError) return 413;
  return httpStatusByCode[error.code] ?? 500;
}

/**
 * The google.rpc.Status JSON of an error. Details are rendered as Any JSON; a detail whose type
 * the registry does not know is left out (it cannot be rendered). A buf.validate.Violations
 * detail is followed by the same violations as a google.rpc.BadRequest, so REST clients read
 * field errors in one shape whichever layer found them.
 */
export function statusBodyOf(error: ConnectError): { code: number; message: string; details: JsonValue[] } {
  const details: JsonValue[] = [];
  for (const { desc, message } of detailsOf(error)) {
    details.push(toJson(AnySchema, anyPack(desc, message), { registry: meshRegistry }));
    if (desc.typeName === "buf.validate.Violations") {
      const badRequest = badRequestOfViolations(toJson(desc, message, { registry: meshRegistry }));
      details.push(toJson(AnySchema, anyPack(BadRequestSchema, badRequest), { registry: meshRegistry }));
    }
  }
  return { code: error.code, message: error.rawMessage, details };
}

/** The error as a JSON response: status from the table, a google.rpc.Status body. */
export function errorResponse(error: unknown, headers?: HeadersInit): Response {
  const connectError = toGatewayError(error);
  const response = new Response(JSON.stringify(statusBodyOf(connectError)), { status: httpStatusOf(connectError), headers });
  response.headers.set("content-type", "application/json");
  return response;
}

/** The details the registry knows, decoded: outgoing ones (made here) and incoming ones (from a backend). */
function detailsOf(error: ConnectError): { desc: DescMessage; message: Message }[] {
  const decoded: { desc: DescMessage; message: Message }[] = [];
  for (const detail of error.details) {
    try {
      const desc = meshRegistry.getMessage("desc" in detail ? detail.desc.typeName : detail.type);
      if (!desc) continue;
      // An outgoing detail holds a message or its init shape; an incoming one the binary Any value.
      decoded.push({ desc, message: "desc" in detail ? create(desc, detail.value as never) : fromBinary(desc, detail.value) });
    } catch {
      // A detail that does not decode is left out, as connect's findDetails() does.
    }
  }
  return decoded;
}

/** buf.validate.Violations (as JSON) → google.rpc.BadRequest, field paths in JSON names. */
function badRequestOfViolations(json: JsonValue) {
  const violations = ((json as JsonObject).violations ?? []) as JsonObject[];
  return create(BadRequestSchema, {
    fieldViolations: violations.map((v) => ({
      field: fieldPathText(v.field as JsonObject | undefined) || String(v.fieldPath ?? ""),
      description: String(v.message ?? ""),
      reason: String(v.ruleId ?? ""),
    })),
  });
}

/** A buf.validate.FieldPath as the client names it: `requests[0].job.labels["k"]`. */
function fieldPathText(path: JsonObject | undefined): string {
  const elements = (path?.elements ?? []) as JsonObject[];
  return elements
    .map((e, i) => {
      const name = (i === 0 ? "" : ".") + jsonNameOf(String(e.fieldName ?? ""));
      if ("index" in e) return `${name}[${String(e.index)}]`;
      if ("stringKey" in e) return `${name}[${JSON.stringify(e.stringKey)}]`;
      for (const key of ["intKey", "uintKey", "boolKey"]) {
        if (key in e) return `${name}[${String(e[key])}]`;
      }
      return name;
    })
    .join("");
}

/** protoc's default json_name: "page_size" → "pageSize" (none of our fields sets its own). */
function jsonNameOf(protoName: string): string {
  return protoName.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/**
 * The REST shape of every method, read from its `google.api.http` option: the gateway builds its
 * routes and the OpenAPI document from these at start-up, and no route is written by hand. A
 * method without a rule stops the process, as one without an authz rule does.
 */
import { getOption, hasOption, type DescMethod, type DescService } from "@bufbuild/protobuf";
// @deno-types="../../gen/google/api/annotations_pb.d.ts"
import { http } from "../../gen/google/api/annotations_pb.js";
// @deno-types="../../gen/google/api/http_pb.d.ts"
import type { HttpRule } from "../../gen/google/api/http_pb.js";

/** One way to reach a method over HTTP: the rule itself or one of its additional_bindings. */
export interface HttpBinding {
  method: DescMethod;
  /** GET, POST, PUT, PATCH, DELETE, or a custom pattern's verb, upper-case. */
  verb: string;
  /** The path template, e.g. "/v1/{name=jobs/*}:cancel". */
  path: string;
  /** "" (no body), "*" (the whole request) or the name of the request field the body fills. */
  body: string;
  /** "" (the whole response) or the name of the response field that is the body. */
  responseBody: string;
}

export class MissingHttpRuleError extends Error {
  constructor(method: string, problem: string) {
    super(`${method}: ${problem}; every RPC needs option (google.api.http) = {get: "/v1/..."} (or post, patch, put, delete, custom)`);
    this.name = "MissingHttpRuleError";
  }
}

/** The bindings of one method, its main rule first. Throws MissingHttpRuleError when it has none or one is malformed. */
export function httpBindingsOf(method: DescMethod): HttpBinding[] {
  const name = `${method.parent.typeName}.${method.name}`;
  if (!hasOption(method, http)) throw new MissingHttpRuleError(name, "no google.api.http option");
  const rule = getOption(method, http);
  const bindings = [bindingOf(method, name, rule)];
  for (const extra of rule.additionalBindings) {
    if (extra.additionalBindings.length > 0) throw new MissingHttpRuleError(name, "additional_bindings must not nest");
    bindings.push(bindingOf(method, name, extra));
  }
  return bindings;
}

/** Every binding of every method of the services, in declaration order. */
export function httpBindingsOfServices(services: readonly DescService[]): HttpBinding[] {
  return services.flatMap((service) => service.methods.flatMap(httpBindingsOf));
}

function bindingOf(method: DescMethod, name: string, rule: HttpRule): HttpBinding {
  const { pattern } = rule;
  let verb: string;
  let path: string;
  switch (pattern.case) {
    case "get":
    case "put":
    case "post":
    case "delete":
    case "patch":
      verb = pattern.case.toUpperCase();
      path = pattern.value;
      break;
    case "custom":
      verb = pattern.value.kind.toUpperCase();
      path = pattern.value.path;
      break;
    default:
      throw new MissingHttpRuleError(name, "google.api.http has no pattern");
  }
  if (!path.startsWith("/")) throw new MissingHttpRuleError(name, `path "${path}" must start with /`);
  if (rule.body !== "" && rule.body !== "*" && !method.input.fields.some((f) => f.name === rule.body)) {
    throw new MissingHttpRuleError(name, `body "${rule.body}" is not a field of ${method.input.typeName}`);
  }
  if (rule.responseBody !== "" && !method.output.fields.some((f) => f.name === rule.responseBody)) {
    throw new MissingHttpRuleError(name, `response_body "${rule.responseBody}" is not a field of ${method.output.typeName}`);
  }
  return { method, verb, path, body: rule.body, responseBody: rule.responseBody };
}

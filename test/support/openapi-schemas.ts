/**
 * The gateway's own `/openapi.json` compiled with ajv (JSON Schema 2020-12, as OpenAPI 3.1 embeds
 * it), so an e2e test can check a served answer against the schema the document promises for its
 * operation, status and media type. Shared by the tests that check answers (gateway-responses,
 * gateway-rest): one reading of the document, one set of formats.
 */
import { Ajv2020, type ValidateFunction } from "ajv/dist/2020.js";

export interface Operation {
  operationId?: string;
  responses?: Record<string, ResponseObject | { $ref: string }>;
}
interface ResponseObject {
  content?: Record<string, { schema?: unknown }>;
}
export type OpenApiDocument = {
  openapi: string;
  paths: Record<string, Record<string, Operation>>;
  components?: { schemas?: Record<string, unknown>; responses?: Record<string, ResponseObject> };
};

/** An operation of the document with where it sits: its path template and (lower-case) verb. */
export interface LocatedOperation {
  path: string;
  verb: string;
  operation: Operation;
}

/**
 * Formats the document uses, checked as proto3 JSON writes them: int64 as a decimal string,
 * int32 and double as JSON numbers, timestamps as RFC 3339. Each applies to one JSON type (ajv
 * ignores a format on a value of another type).
 */
const formats: Record<string, { type: "string"; validate: (v: string) => boolean } | { type: "number"; validate: (v: number) => boolean }> = {
  // RFC 3339 as proto3 JSON writes a Timestamp: 0, 3, 6 or 9 fractional digits, Z or an offset.
  "date-time": { type: "string", validate: (v) => /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/.test(v) && !Number.isNaN(Date.parse(v)) },
  int64: { type: "string", validate: (v) => /^-?\d+$/.test(v) && BigInt(v) >= -(2n ** 63n) && BigInt(v) < 2n ** 63n },
  uint64: { type: "string", validate: (v) => /^\d+$/.test(v) && BigInt(v) < 2n ** 64n },
  int32: { type: "number", validate: (v) => Number.isInteger(v) && v >= -(2 ** 31) && v < 2 ** 31 },
  uint32: { type: "number", validate: (v) => Number.isInteger(v) && v >= 0 && v < 2 ** 32 },
  double: { type: "number", validate: (v) => Number.isFinite(v) },
  float: { type: "number", validate: (v) => Number.isFinite(v) },
  byte: { type: "string", validate: (v) => /^[A-Za-z0-9+/_-]*={0,2}$/.test(v) },
  duration: { type: "string", validate: (v) => /^-?\d+(\.\d{1,9})?s$/.test(v) },
  uuid: { type: "string", validate: (v) => /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(v) },
  uri: { type: "string", validate: (v) => URL.canParse(v) },
  email: { type: "string", validate: (v) => /^[^@\s]+@[^@\s]+$/.test(v) },
};

/** JSON pointer escaping (RFC 6901). */
export const pointer = (...tokens: string[]) => tokens.map((s) => "/" + s.replaceAll("~", "~0").replaceAll("/", "~1")).join("");

export interface OpenApiSchemas {
  document: OpenApiDocument;
  /** Formats the document uses, and those of them accepted unchecked (e.g. "binary", only on raw bodies). */
  formats: { used: string[]; unchecked: string[] };
  /** The one operation whose operationId names `rpc` (`GetJob`, `JobService_GetJob`, ...); throws on none or several. */
  operationOf(rpc: string): LocatedOperation;
  /** The operation a client would pick for `verb` on a concrete path (parameters match one segment, no colon); throws unless exactly one. */
  operationAt(verb: string, concretePath: string): LocatedOperation;
  /**
   * The validator of the body the document gives `located` for `status` (its own entry, else
   * `default`) in `mediaType`, following a `$ref` to a shared response; `within` descends into the
   * schema (e.g. ["properties", "result"]). Throws when the document documents no such body.
   */
  validatorOf(located: LocatedOperation, status: number, mediaType?: string, within?: string[]): ValidateFunction;
  /** The media types the document gives `located` for `status` (its own entry, else `default`); none when it documents no such answer. */
  mediaTypesOf(located: LocatedOperation, status: number): string[];
  /** ajv's words for a failed validation. */
  errorsText(validate: ValidateFunction): string;
}

/** Fetches the document at `documentUrl` and compiles it whole under that URL (its `#/components/...` refs resolve against it). */
export async function loadOpenApiSchemas(documentUrl: string): Promise<OpenApiSchemas> {
  const response = await fetch(documentUrl);
  if (response.status !== 200) throw new Error(`${documentUrl}: HTTP ${response.status}`);
  const document = (await response.json()) as OpenApiDocument;
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  const used = new Set<string>();
  JSON.stringify(document, (key, value: unknown) => {
    if (key === "format" && typeof value === "string") used.add(value);
    return value;
  });
  // A format this module does not know is accepted, and listed as unchecked.
  for (const format of used) ajv.addFormat(format, formats[format] ?? true);
  ajv.addSchema(document, documentUrl);

  const located = (): LocatedOperation[] =>
    Object.entries(document.paths).flatMap(([path, item]) => Object.entries(item).map(([verb, operation]) => ({ path, verb, operation })));
  const exactlyOne = (found: LocatedOperation[], what: string) => {
    if (found.length !== 1) throw new Error(`${found.length} operations of ${what} in /openapi.json: ${found.map((f) => `${f.verb} ${f.path} (${f.operation.operationId})`).join(", ")}`);
    return found[0]!;
  };
  const resolvePointer = (at: string): unknown =>
    at.split("/").slice(1).reduce<unknown>((node, token) => (node as Record<string, unknown> | undefined)?.[token.replaceAll("~1", "/").replaceAll("~0", "~")], document);

  /** The response object the document gives for `status` (its own entry, else `default`), `$ref` followed, with its JSON pointer. */
  const responseOf = ({ path, verb, operation }: LocatedOperation, status: number) => {
    const entry = operation.responses?.[String(status)] ? String(status) : "default";
    const response = operation.responses?.[entry];
    if (!response) return undefined;
    let at = pointer("paths", path, verb, "responses", entry);
    if ("$ref" in response) {
      if (!response.$ref.startsWith("#/")) throw new Error(`${operation.operationId} ${status}: a $ref outside the document: ${response.$ref}`);
      at = response.$ref.slice(1);
    }
    return { at, entry, content: (resolvePointer(at) as ResponseObject | undefined)?.content };
  };

  return {
    document,
    formats: { used: [...used], unchecked: [...used].filter((f) => !formats[f]) },
    operationOf(rpc) {
      return exactlyOne(located().filter(({ operation }) => typeof operation.operationId === "string" && new RegExp(`(^|[._/])${rpc}$`).test(operation.operationId)), rpc);
    },
    operationAt(verb, concretePath) {
      const matches = (template: string) => {
        const pattern = template.split(/(\{[^}]+\})/).map((part) => (part.startsWith("{") ? "[^/:]+" : part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))).join("");
        return new RegExp(`^${pattern}$`).test(concretePath);
      };
      return exactlyOne(located().filter((o) => o.verb === verb.toLowerCase() && matches(o.path)), `${verb} ${concretePath}`);
    },
    mediaTypesOf(located, status) {
      return Object.keys(responseOf(located, status)?.content ?? {});
    },
    validatorOf(located, status, mediaType = "application/json", within = []) {
      const { operation } = located;
      const name = `${located.verb.toUpperCase()} ${located.path} (${operation.operationId})`;
      const response = responseOf(located, status);
      if (!response) throw new Error(`${name}: /openapi.json documents no ${status} answer (${JSON.stringify(Object.keys(operation.responses ?? {}))})`);
      const { at, content, entry } = response;
      if (!content?.[mediaType]?.schema) throw new Error(`${name}: no ${mediaType} schema for ${status} (documented: ${JSON.stringify(Object.keys(content ?? {}))})`);
      const validate = ajv.getSchema(`${documentUrl}#${at}${pointer("content", mediaType, "schema", ...within)}`);
      if (!validate) throw new Error(`${name}: ajv cannot reach its ${entry} ${mediaType} schema${within.length ? ` at ${within.join("/")}` : ""}`);
      return validate;
    },
    errorsText: (validate) => ajv.errorsText(validate.errors),
  };
}

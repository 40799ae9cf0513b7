/**
 * JSON Schema (2020-12, the dialect OpenAPI 3.1 embeds) of messages in their proto3 JSON form, as
 * the gateway reads and writes them: json names, int64 as strings, enums by name, well-known
 * types in their JSON forms, protovalidate rules as JSON Schema keywords where they map.
 *
 * A message has up to three component schemas. The output form (`jobmesh.v1.Job`) describes
 * responses: every field may be present (the gateway emits default values) and unknown
 * properties are allowed, so a client keeps working when a field is added. The input form
 * (`jobmesh.v1.Job.input`; buf lint's PascalCase rule keeps it from colliding with a nested
 * message) describes request bodies: `required` from field behaviours and protovalidate, and
 * `additionalProperties: false`, because the gateway refuses unknown fields. The update form
 * (`jobmesh.v1.Job.update`) is the input form without `required`: an update with a field mask
 * sends only the fields it changes.
 */
import { getOption, hasOption, ScalarType, type DescEnum, type DescField, type DescMessage } from "@bufbuild/protobuf";
import {
  field as validateField,
  Ignore,
  oneof as validateOneof,
  type FieldRules,
} from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
// @deno-types="../../gen/google/api/field_behavior_pb.d.ts"
import { field_behavior, FieldBehavior } from "../../gen/google/api/field_behavior_pb.js";

/** A JSON Schema object. */
export type JsonSchema = Record<string, unknown>;

/** Which side of the wire a schema describes. */
export type SchemaForm = "output" | "input" | "update";

const componentPrefix = "#/components/schemas/";

/** The component name of a message or enum in one form: its full type name, plus ".input" or ".update" for those forms of a message. */
export function componentNameOf(desc: DescMessage | DescEnum, form: SchemaForm = "output"): string {
  return desc.kind === "message" && form !== "output" ? `${desc.typeName}.${form}` : desc.typeName;
}

/** A `$ref` to the component of a message or enum. */
export function refTo(desc: DescMessage | DescEnum, form: SchemaForm = "output"): { $ref: string } {
  return { $ref: componentPrefix + componentNameOf(desc, form) };
}

/**
 * Collects the component schemas of the messages and enums a document refers to: ask for a
 * message's reference and it (and everything it reaches) lands in `components`.
 */
export class SchemaCollector {
  readonly components: Record<string, JsonSchema> = {};

  /** The `$ref` to a message or enum, adding its component schema (and those it refers to) once. */
  ref(desc: DescMessage | DescEnum, form: SchemaForm): { $ref: string } {
    const name = componentNameOf(desc, form);
    if (!(name in this.components)) {
      this.components[name] = {}; // reserved first: recursive messages refer to themselves
      this.components[name] = desc.kind === "enum" ? enumSchema(desc) : this.messageSchema(desc, form);
    }
    return refTo(desc, form);
  }

  /** The schema of one field's value, with its constraints, field behaviours and the components it refers to. */
  fieldSchema(field: DescField, requestedForm: SchemaForm): JsonSchema {
    const rules = rulesOf(field);
    const behaviors = behaviorsOf(field);
    // What a client sends there is ignored: the output form describes it, without input variants of output-only messages.
    const form = behaviors.has(FieldBehavior.OUTPUT_ONLY) ? "output" : requestedForm;
    let schema: JsonSchema;
    switch (field.fieldKind) {
      case "scalar":
        schema = withRules(scalarSchema(field.scalar, form), rules, field);
        break;
      case "enum":
        schema = withRules(this.enumValueSchema(field.enum, form), rules, field);
        break;
      case "message":
        schema = this.messageValueSchema(field.message, form);
        break;
      case "list": {
        const items =
          field.listKind === "scalar"
            ? scalarSchema(field.scalar, form)
            : field.listKind === "enum"
              ? this.enumValueSchema(field.enum, form)
              : this.messageValueSchema(field.message, form);
        const repeated = rules?.type.case === "repeated" ? rules.type.value : undefined;
        schema = { type: "array", items: repeated?.items ? withRules(items, repeated.items, field) : items };
        if (repeated?.minItems) schema.minItems = Number(repeated.minItems);
        if (repeated?.maxItems) schema.maxItems = Number(repeated.maxItems);
        if (repeated?.unique) schema.uniqueItems = true;
        break;
      }
      case "map": {
        const values =
          field.mapKind === "scalar"
            ? scalarSchema(field.scalar, form)
            : field.mapKind === "enum"
              ? this.enumValueSchema(field.enum, form)
              : this.messageValueSchema(field.message, form);
        const map = rules?.type.case === "map" ? rules.type.value : undefined;
        // JSON object keys are strings whatever the key type; integer and bool keys in their text form.
        const keys: JsonSchema = map?.keys ? withRules({ type: "string" }, map.keys, field) : { type: "string" };
        schema = { type: "object", additionalProperties: map?.values ? withRules(values, map.values, field) : values };
        if (Object.keys(keys).length > 1) schema.propertyNames = keys;
        if (map?.minPairs) schema.minProperties = Number(map.minPairs);
        if (map?.maxPairs) schema.maxProperties = Number(map.maxPairs);
        break;
      }
    }
    if (behaviors.has(FieldBehavior.OUTPUT_ONLY)) schema.readOnly = true;
    if (behaviors.has(FieldBehavior.INPUT_ONLY)) schema.writeOnly = true;
    if (behaviors.has(FieldBehavior.IMMUTABLE)) schema.description = [schema.description, "Immutable: set on create only."].filter(Boolean).join(" ");
    return schema;
  }

  /** True when a field must be present in a request: REQUIRED behaviour or protovalidate `required`. */
  isRequiredInput(field: DescField): boolean {
    return behaviorsOf(field).has(FieldBehavior.REQUIRED) || rulesOf(field)?.required === true;
  }

  private messageSchema(message: DescMessage, form: SchemaForm): JsonSchema {
    const wellKnown = wellKnownSchema(message);
    if (wellKnown) return wellKnown;
    const properties: Record<string, JsonSchema> = {};
    const required: string[] = [];
    for (const field of message.fields) {
      properties[field.jsonName] = this.fieldSchema(field, form);
      if (form === "input" && this.isRequiredInput(field)) required.push(field.jsonName);
    }
    const schema: JsonSchema = { type: "object", title: message.name, properties };
    const oneofNotes = message.oneofs.map((oneof) => {
      const members = oneof.fields.map((f) => `\`${f.jsonName}\``).join(", ");
      const exactlyOne = hasOption(oneof, validateOneof) && getOption(oneof, validateOneof).required;
      return `${exactlyOne ? "Exactly" : "At most"} one of ${members} (oneof \`${oneof.name}\`).`;
    });
    if (oneofNotes.length > 0) schema.description = oneofNotes.join(" ");
    if (required.length > 0) schema.required = required;
    if (form !== "output") schema.additionalProperties = false;
    return schema;
  }

  /** A message-typed value: a `$ref`; well-known types in their JSON forms are refs too (one place describes them). */
  private messageValueSchema(message: DescMessage, form: SchemaForm): JsonSchema {
    // Well-known types look the same on both sides: one component for them.
    return this.ref(message, wellKnownSchema(message) ? "output" : form);
  }

  /** Responses carry enum names; requests may also use the numbers. */
  private enumValueSchema(desc: DescEnum, form: SchemaForm): JsonSchema {
    if (desc.typeName === "google.protobuf.NullValue") return { type: "null" };
    const names = this.ref(desc, "output");
    return form === "output" ? names : { anyOf: [names, { type: "integer", format: "int32" }] };
  }
}

function enumSchema(desc: DescEnum): JsonSchema {
  return { type: "string", title: desc.name, enum: desc.values.map((v) => v.name) };
}

function rulesOf(field: DescField): FieldRules | undefined {
  return hasOption(field, validateField) ? getOption(field, validateField) : undefined;
}

function behaviorsOf(field: DescField): Set<FieldBehavior> {
  return new Set(hasOption(field, field_behavior) ? getOption(field, field_behavior) : []);
}

/** proto3 JSON of each scalar type: 64-bit integers are strings (JSON numbers lose precision past 2^53), bytes are base64. */
function scalarSchema(scalar: ScalarType, form: SchemaForm): JsonSchema {
  switch (scalar) {
    case ScalarType.STRING:
      return { type: "string" };
    case ScalarType.BOOL:
      return { type: "boolean" };
    case ScalarType.BYTES:
      return { type: "string", contentEncoding: "base64" };
    case ScalarType.DOUBLE:
      return { type: "number", format: "double" };
    case ScalarType.FLOAT:
      return { type: "number", format: "float" };
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      // The gateway writes them as strings and reads numbers too.
      return { type: form === "output" ? "string" : ["string", "integer"], format: "int64" };
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return { type: form === "output" ? "string" : ["string", "integer"], format: "uint64" };
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return { type: "integer", format: "uint32", minimum: 0 };
    default:
      return { type: "integer", format: "int32" };
  }
}

/** Well-known types have JSON forms of their own (protobuf's JSON mapping table). */
function wellKnownSchema(message: DescMessage): JsonSchema | undefined {
  switch (message.typeName) {
    case "google.protobuf.Timestamp":
      return { type: "string", format: "date-time", description: "RFC 3339, e.g. 2025-01-01T00:00:00Z." };
    case "google.protobuf.Duration":
      return { type: "string", pattern: "^-?[0-9]+(\\.[0-9]{1,9})?s$", description: 'Seconds with an "s" suffix, e.g. "1.5s".' };
    case "google.protobuf.FieldMask":
      return { type: "string", description: 'Comma-separated field paths in json names, e.g. "displayName,roles".' };
    case "google.protobuf.Struct":
      return { type: "object" };
    case "google.protobuf.Value":
      return {};
    case "google.protobuf.ListValue":
      return { type: "array" };
    case "google.protobuf.Empty":
      return { type: "object" };
    case "google.protobuf.Any":
      return {
        type: "object",
        properties: { "@type": { type: "string", description: 'e.g. "type.googleapis.com/google.rpc.BadRequest".' } },
        required: ["@type"],
      };
    case "google.protobuf.DoubleValue":
    case "google.protobuf.FloatValue":
      return { type: ["number", "null"] };
    case "google.protobuf.Int64Value":
    case "google.protobuf.UInt64Value":
      return { type: ["string", "null"], format: "int64" };
    case "google.protobuf.Int32Value":
    case "google.protobuf.UInt32Value":
      return { type: ["integer", "null"], format: "int32" };
    case "google.protobuf.BoolValue":
      return { type: ["boolean", "null"] };
    case "google.protobuf.StringValue":
      return { type: ["string", "null"] };
    case "google.protobuf.BytesValue":
      return { type: ["string", "null"], contentEncoding: "base64" };
  }
  return undefined;
}

/**
 * Adds the protovalidate rules that have a JSON Schema keyword. Rules without one (CEL,
 * not_contains, max_bytes...) are still enforced by the services; the document just does not say.
 * A field whose rules are skipped for its zero value (IGNORE_IF_ZERO_VALUE) also accepts it.
 */
function withRules(base: JsonSchema, rules: FieldRules | undefined, field: DescField): JsonSchema {
  if (!rules) return base;
  const constrained: JsonSchema = { ...base };
  const rule = rules.type;
  switch (rule.case) {
    case "string": {
      const r = rule.value;
      if (r.len) constrained.minLength = constrained.maxLength = Number(r.len);
      if (r.minLen) constrained.minLength = Number(r.minLen);
      if (r.maxLen) constrained.maxLength = Number(r.maxLen);
      if (r.pattern) constrained.pattern = r.pattern;
      if (r.in.length > 0) constrained.enum = [...r.in];
      if (r.const) constrained.const = r.const;
      const format = stringFormats[r.wellKnown.case ?? ""];
      if (format) constrained.format = format;
      break;
    }
    case "bytes":
      // Lengths count bytes; the base64 text is 4/3 as long, so only the limits' spirit carries over.
      break;
    case "enum": {
      const r = rule.value;
      if (r.in.length > 0) {
        const names = field.enum?.values.filter((v) => r.in.includes(v.number)).map((v) => v.name) ?? [];
        if (names.length > 0) constrained.description = `One of ${names.join(", ")}.`;
      }
      break;
    }
    case "int32":
    case "int64":
    case "uint32":
    case "uint64":
    case "sint32":
    case "sint64":
    case "fixed32":
    case "fixed64":
    case "sfixed32":
    case "sfixed64":
    case "double":
    case "float": {
      // For 64-bit integers these bind the number form; the string form is checked by the service.
      const { lessThan, greaterThan } = rule.value;
      if (greaterThan.case === "gte") constrained.minimum = Number(greaterThan.value);
      if (greaterThan.case === "gt") constrained.exclusiveMinimum = Number(greaterThan.value);
      if (lessThan.case === "lte") constrained.maximum = Number(lessThan.value);
      if (lessThan.case === "lt") constrained.exclusiveMaximum = Number(lessThan.value);
      if (rule.value.in.length > 0) constrained.enum = rule.value.in.map(Number);
      break;
    }
    default:
      return base;
  }
  if (rules.ignore === Ignore.IF_ZERO_VALUE && Object.keys(constrained).length > Object.keys(base).length) {
    const zero = base.type === "string" ? "" : base.type === "integer" || base.type === "number" ? 0 : undefined;
    if (zero !== undefined) return { anyOf: [{ const: zero }, constrained] };
  }
  return constrained;
}

/** protovalidate's well-known string rules that JSON Schema names as a format. */
const stringFormats: Record<string, string> = {
  email: "email",
  hostname: "hostname",
  ipv4: "ipv4",
  ipv6: "ipv6",
  uri: "uri",
  uriRef: "uri-reference",
  uuid: "uuid",
};

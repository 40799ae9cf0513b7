/**
 * Redaction declared in the proto: a field marked `[(jobmesh.v1.redact) = true]` (passwords,
 * tokens, API key and webhook secrets, document bytes and text) never leaves the process in a
 * record of a call. Whatever records requests (the audit log, logs) records `redacted(schema,
 * message)`, so what is secret is decided once, next to the field, and a new secret field is
 * covered by marking it (redaction.test.ts fails while a field whose name suggests a secret is
 * unmarked).
 *
 * What a marked field becomes in the copy:
 * - string: "[redacted]" (each element of a list, each value of a map; map keys are kept);
 * - bytes: empty (each element, each value). An empty bytes field is absent in proto3 unless it
 *   is a oneof member, so `redactedPaths` says which fields held bytes that were blanked;
 * - anything else (a message, number, bool, enum): cleared, lists and maps emptied.
 * A oneof keeps its case when its member is a string or bytes, so a record still says that
 * inline content was sent, not what it was. Unknown fields are dropped from the copy: nothing
 * says they are not secret. Transport-free, like the rest of internal/contract.
 */
import { getOption, ScalarType, type DescField, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { isReflectMessage, reflect, type ReflectMessage } from "@bufbuild/protobuf/reflect";
// @deno-types="../../gen/jobmesh/v1/options_pb.d.ts"
import { redact } from "../../gen/jobmesh/v1/options_pb.js";

/** What a marked string field says in a redacted copy. */
export const redactedText = "[redacted]";

/** Fields already asked about: getOption decodes the field's options each time (~25 µs a message). */
const markedFields = new WeakMap<DescField, boolean>();

/** True when the field carries `[(jobmesh.v1.redact) = true]`. */
export function isRedacted(field: DescField): boolean {
  let marked = markedFields.get(field);
  if (marked === undefined) {
    marked = getOption(field, redact);
    markedFields.set(field, marked);
  }
  return marked;
}

/**
 * A deep copy of `message` with every marked field replaced (see the module comment), at any
 * depth: in nested messages, lists, maps and oneofs. The original is not touched, so a handler
 * still working on it is not disturbed.
 */
export function redacted<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): MessageShape<Desc> {
  return copyRedacted(reflect(schema, message)).message as MessageShape<Desc>;
}

/**
 * The paths of the fields `redacted` replaces in this message, in proto field names:
 * `requests[1].job.document.text`, `children["a"].secret`. Only fields that are set count.
 */
export function redactedPaths<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>): string[] {
  const paths: string[] = [];
  collectPaths(reflect(schema, message), "", paths);
  return paths;
}

function copyRedacted(input: ReflectMessage): ReflectMessage {
  const output = reflect(input.desc);
  for (const field of input.fields) {
    if (!input.isSet(field)) continue;
    const marked = isRedacted(field);
    switch (field.fieldKind) {
      case "list": {
        if (marked && !hasPlaceholder(field)) break;
        const list = output.get(field);
        for (const item of input.get(field)) list.add(marked ? placeholder(field) : copyValue(item));
        break;
      }
      case "map": {
        if (marked && !hasPlaceholder(field)) break;
        const map = output.get(field);
        for (const [key, value] of input.get(field)) map.set(key, marked ? placeholder(field) : copyValue(value));
        break;
      }
      default:
        if (marked && !hasPlaceholder(field)) break;
        output.set(field, marked ? placeholder(field) : copyValue(input.get(field)));
    }
  }
  return output;
}

/** A value of an unmarked field: messages are copied with their own marks applied. */
function copyValue(value: unknown): unknown {
  if (isReflectMessage(value)) return copyRedacted(value);
  if (value instanceof Uint8Array) return value.slice();
  return value;
}

/** Strings and bytes keep a placeholder in place of the value; everything else is cleared. */
function hasPlaceholder(field: DescField): boolean {
  return field.scalar === ScalarType.STRING || field.scalar === ScalarType.BYTES;
}

function placeholder(field: DescField): string | Uint8Array {
  return field.scalar === ScalarType.STRING ? redactedText : new Uint8Array(0);
}

function collectPaths(message: ReflectMessage, prefix: string, paths: string[]): void {
  for (const field of message.fields) {
    if (!message.isSet(field)) continue;
    const path = prefix + field.name;
    if (isRedacted(field)) {
      paths.push(path);
      continue;
    }
    switch (field.fieldKind) {
      case "message":
        collectPaths(message.get(field), `${path}.`, paths);
        break;
      case "list":
        if (field.listKind !== "message") break;
        for (const [index, item] of message.get(field).entries()) collectPaths(item as ReflectMessage, `${path}[${index}].`, paths);
        break;
      case "map":
        if (field.mapKind !== "message") break;
        for (const [key, value] of message.get(field)) collectPaths(value as ReflectMessage, `${path}[${JSON.stringify(String(key))}].`, paths);
        break;
    }
  }
}

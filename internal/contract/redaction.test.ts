// Redaction is declared in the proto, so these tests check the declarations as much as the code:
// a field whose name suggests a credential or a document's content must carry
// `[(jobmesh.v1.redact) = true]`, or be listed below with the reason it is not secret.
import t from "tap";
import { create, createFileRegistry, setExtension, toBinary, toJsonString, ScalarType, type DescField, type DescMessage } from "@bufbuild/protobuf";
import { FieldDescriptorProto_Label, FieldDescriptorProto_Type, FieldOptionsSchema, FileDescriptorProtoSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
// @deno-types="../../gen/jobmesh/v1/options_pb.d.ts"
import { redact } from "../../gen/jobmesh/v1/options_pb.js";
// @deno-types="../../gen/jobmesh/v1/auth_pb.d.ts"
import { CreateApiKeyResponseSchema, ExchangeApiKeyRequestSchema, LoginRequestSchema, Role } from "../../gen/jobmesh/v1/auth_pb.js";
// @deno-types="../../gen/jobmesh/v1/jobs_pb.d.ts"
import { CreateJobRequestSchema, CreateJobsRequestSchema, GetJobResultResponseSchema, HeadingSchema, UploadDocumentRequestSchema } from "../../gen/jobmesh/v1/jobs_pb.js";
import { isRedacted, redacted, redactedPaths, redactedText } from "./redaction.ts";
import { meshRegistry, meshServices } from "./services.ts";

/** Names that suggest a credential: passwords, tokens, secrets, keys, one-time codes. */
const credentialName = /passw(or)?d|passphrase|secret|token|credential|private|(^|_)keys?($|_)|api_?key|authorization|bearer|cookie|(^|_)otp($|_)|(^|_)pin$/;
/** Names that suggest a document's content (or any payload a caller sends as data). */
const contentName = /content|chunk|(^|_)data$|(^|_)text$|payload|(^|_)body$|(^|_)raw($|_)|blob|summary/;

/**
 * Fields whose name matches but which hold no secret. A key is a field name (any message) or a
 * full field name. Each needs its reason; an entry that no longer matches anything fails.
 */
const notSecret = new Map<string, string>([
  ["page_token", "a pagination cursor: names a position in a list the caller may read anyway"],
  ["next_page_token", "the same cursor, in the response"],
  ["token_type", 'always "Bearer"'],
  ["jobmesh.v1.ResultObject.key", "the object-store key of a stored result: a path, not key material"],
  ["jobmesh.v1.Actor.credential_hint", "an API key's public prefix or a token's id: made to be recorded, never the secret"],
  ["jobmesh.v1.AuditSigningKey.key_id", "names a public key"],
  ["jobmesh.v1.AuditSigningKey.public_key", "a public key: published so anyone can verify"],
  ["jobmesh.v1.AuditCheckpoint.event_hashes", "SHA-256 hashes of audit events: public evidence"],
  ["jobmesh.v1.AuditCheckpoint.key_id", "names the public key that signed"],
  ["jobmesh.v1.AuditCheckpoint.signature", "an Ed25519 signature: public evidence"],
]);

/** Types whose contents neither the name check nor redaction can see into field by field. */
const opaqueTypes = new Set([
  "google.protobuf.Any",
  "google.protobuf.Struct",
  "google.protobuf.Value",
  "google.protobuf.ListValue",
  "google.protobuf.StringValue",
  "google.protobuf.BytesValue",
]);

/** Every message the services send or receive, at any depth, and every message of jobmesh.v1. */
function meshMessages(): DescMessage[] {
  const seen = new Map<string, DescMessage>();
  const visit = (message: DescMessage) => {
    if (seen.has(message.typeName)) return;
    seen.set(message.typeName, message);
    for (const field of message.fields) if (field.message) visit(field.message);
  };
  for (const service of meshServices) for (const method of service.methods) [method.input, method.output].forEach(visit);
  for (const type of meshRegistry) if (type.kind === "message" && type.typeName.startsWith("jobmesh.v1.")) visit(type);
  return [...seen.values()];
}

/** A field that can hold text or bytes: a string or bytes scalar, list element or map value. */
function holdsTextOrBytes(field: DescField): boolean {
  return field.scalar === ScalarType.STRING || field.scalar === ScalarType.BYTES;
}

function exceptionFor(field: DescField): string | undefined {
  return notSecret.get(field.name) ?? notSecret.get(`${field.parent.typeName}.${field.name}`);
}

/** Fields that must be marked: text or bytes with a telling name, and every bytes field. */
function mustBeMarked(field: DescField): boolean {
  if (!holdsTextOrBytes(field)) return false;
  return credentialName.test(field.name) || contentName.test(field.name) || field.scalar === ScalarType.BYTES;
}

const fields = meshMessages().flatMap((message) => message.fields);

void t.test("redaction - every field whose name suggests a secret or document content is marked (jobmesh.v1.redact)", async (t) => {
  t.ok(fields.length > 300, `the walk reaches the mesh's messages (${fields.length} fields)`);
  const unmarked = fields.filter((f) => mustBeMarked(f) && !isRedacted(f) && exceptionFor(f) === undefined).map((f) => `${f.parent.typeName}.${f.name}`);
  t.same(unmarked, [], "mark each with [(jobmesh.v1.redact) = true], or add it to notSecret with the reason it holds no secret");
  // The check is not vacuous: the fields the issue names are among those it found marked.
  const marked = new Set(fields.filter(isRedacted).map((f) => `${f.parent.typeName}.${f.name}`));
  for (const name of [
    "jobmesh.v1.LoginRequest.password",
    "jobmesh.v1.LoginResponse.access_token",
    "jobmesh.v1.RefreshTokenRequest.refresh_token",
    "jobmesh.v1.CreateApiKeyResponse.secret",
    "jobmesh.v1.ExchangeApiKeyRequest.secret",
    "jobmesh.v1.CreateWebhookResponse.secret",
    "jobmesh.v1.Document.content",
    "jobmesh.v1.Document.text",
    "jobmesh.v1.UploadDocumentRequest.chunk",
    "jobmesh.v1.DownloadJobResultResponse.chunk",
  ]) {
    t.ok(marked.has(name), `${name} is marked`);
  }
});

void t.test("redaction - each exception is still needed: it matches a field, which is not marked", async (t) => {
  for (const [key, reason] of notSecret) {
    const matching = fields.filter((f) => f.name === key || `${f.parent.typeName}.${f.name}` === key);
    t.ok(matching.some((f) => mustBeMarked(f)), `${key} (${reason}) names a field the check would flag`);
    t.same(matching.filter(isRedacted).map((f) => `${f.parent.typeName}.${f.name}`), [], `${key} is not also marked`);
  }
});

void t.test("redaction - no field has an opaque type (Any, Struct, wrappers) that redaction cannot see into", async (t) => {
  const opaque = fields.filter((f) => f.message !== undefined && opaqueTypes.has(f.message.typeName)).map((f) => `${f.parent.typeName}.${f.name}`);
  t.same(opaque, [], "a field of such a type needs redaction that understands it first");
});

void t.test("redacted - LoginRequest: the password is replaced, email and tenant kept, the original untouched", async (t) => {
  const request = create(LoginRequestSchema, { email: "ada@example.com", password: "correct horse battery", tenant: "acme" });
  const copy = redacted(LoginRequestSchema, request);
  t.equal(copy.password, redactedText);
  t.equal(copy.email, "ada@example.com");
  t.equal(copy.tenant, "acme");
  t.equal(request.password, "correct horse battery", "the caller's message is not changed");
  t.notOk(toJsonString(LoginRequestSchema, copy).includes("correct horse"), "nor is the password in the copy's JSON");
  t.same(redactedPaths(LoginRequestSchema, request), ["password"]);
  t.same(redactedPaths(LoginRequestSchema, create(LoginRequestSchema, { email: "ada@example.com" })), [], "an unset field is not reported");
});

void t.test("redacted - CreateApiKeyResponse and ExchangeApiKeyRequest: the key secret is replaced, the key's metadata kept", async (t) => {
  const response = create(CreateApiKeyResponseSchema, {
    apiKey: { name: "apiKeys/ci", displayName: "ci", roles: [Role.OPERATOR], prefix: "jmk_abcd", expireTime: timestampFromDate(new Date("2030-01-01T00:00:00Z")) },
    secret: "jmk_abcdefghijklmnopqrstuvwxyz",
  });
  const copy = redacted(CreateApiKeyResponseSchema, response);
  t.equal(copy.secret, redactedText);
  t.same(copy.apiKey, response.apiKey, "the nested ApiKey is copied whole");
  t.not(copy.apiKey, response.apiKey, "as a copy, not the same object");
  const exchange = redacted(ExchangeApiKeyRequestSchema, create(ExchangeApiKeyRequestSchema, { secret: "jmk_abcdefghijklmnopqrstuvwxyz" }));
  t.equal(exchange.secret, redactedText);
});

void t.test("redacted - UploadDocumentRequest: a chunk is emptied with its oneof case kept; metadata untouched", async (t) => {
  const chunk = create(UploadDocumentRequestSchema, { part: { case: "chunk", value: new TextEncoder().encode("%PDF-1.7 secret plans") } });
  const copy = redacted(UploadDocumentRequestSchema, chunk);
  t.equal(copy.part.case, "chunk", "the record still says a chunk was sent");
  t.same(copy.part.value, new Uint8Array(0));
  t.equal((chunk.part.value as Uint8Array).length, 21, "the caller's chunk is intact");
  t.notOk(Buffer.from(toBinary(UploadDocumentRequestSchema, copy)).includes("secret plans"));
  t.same(redactedPaths(UploadDocumentRequestSchema, chunk), ["chunk"]);

  const metadata = create(UploadDocumentRequestSchema, { part: { case: "metadata", value: { filename: "plans.pdf", mediaType: "application/pdf", sizeBytes: 21n } } });
  t.same(redacted(UploadDocumentRequestSchema, metadata), metadata);
});

void t.test("redacted - CreateJobRequest: inline content and text replaced, also inside CreateJobsRequest's list; URLs and labels kept", async (t) => {
  const inline = create(CreateJobRequestSchema, {
    job: { pipeline: "pipelines/document-default", labels: { team: "legal" }, document: { source: { case: "content", value: new Uint8Array([1, 2, 3]) }, filename: "a.bin" } },
    requestId: "7b0c6f4e-3f7a-4d59-9a53-2f8f7d7f3b11",
  });
  const copy = redacted(CreateJobRequestSchema, inline);
  t.same(copy.job?.document?.source, { case: "content", value: new Uint8Array(0) });
  t.equal(copy.job?.document?.filename, "a.bin");
  t.same(copy.job?.labels, { team: "legal" });
  t.equal(copy.job?.pipeline, "pipelines/document-default");
  t.equal(copy.requestId, inline.requestId);

  const batch = create(CreateJobsRequestSchema, {
    requests: [
      { job: { pipeline: "pipelines/a", document: { source: { case: "text", value: "Patient: Ada, diagnosis ..." } } } },
      { job: { pipeline: "pipelines/b", document: { source: { case: "url", value: "https://example.com/report.pdf" } } } },
    ],
  });
  const batchCopy = redacted(CreateJobsRequestSchema, batch);
  t.same(batchCopy.requests[0]?.job?.document?.source, { case: "text", value: redactedText });
  t.same(batchCopy.requests[1]?.job?.document?.source, { case: "url", value: "https://example.com/report.pdf" });
  t.equal(batchCopy.requests.length, 2);
  t.same(redactedPaths(CreateJobsRequestSchema, batch), ["requests[0].job.document.text"]);
});

void t.test("redacted - GetJobResultResponse: document text deep in lists is replaced, counts and scores kept", async (t) => {
  const response = create(GetJobResultResponseSchema, {
    result: {
      name: "jobs/j1/result",
      text: "the whole document",
      summary: "a sentence of it",
      counts: { words: 3n },
      structure: {
        title: "Q3 layoffs",
        headings: [{ level: 1, text: "Who goes" }],
        tables: [{ hasHeader: true, rows: [{ cells: ["name", "salary"] }, { cells: ["Ada", "120000"] }] }],
      },
      keywords: [{ term: "layoffs", score: 0.9 }],
    },
  });
  const copy = redacted(GetJobResultResponseSchema, response);
  const result = copy.result!;
  t.equal(result.text, redactedText);
  t.equal(result.summary, redactedText);
  t.equal(result.structure?.title, redactedText);
  t.same(result.structure?.headings, [create(HeadingSchema, { level: 1, text: redactedText })]);
  t.same(result.structure?.tables[0]?.rows.map((r) => r.cells), [[redactedText, redactedText], [redactedText, redactedText]], "each cell replaced, the shape kept");
  t.equal(result.structure?.tables[0]?.hasHeader, true);
  t.equal(result.keywords[0]?.score, 0.9);
  t.equal(result.counts?.words, 3n);
  t.equal(result.name, "jobs/j1/result");
  t.notOk(toJsonString(GetJobResultResponseSchema, copy).includes("Ada"));
});

/**
 * A schema the mesh does not have (yet): maps of messages, a marked message, a marked list of
 * bytes, a marked map of strings, a marked number, and a message that contains itself.
 */
function syntheticSchema() {
  const marked = () => {
    const options = create(FieldOptionsSchema);
    setExtension(options, redact, true);
    return options;
  };
  const { STRING: TYPE_STRING, BYTES: TYPE_BYTES, INT32: TYPE_INT32, MESSAGE: TYPE_MESSAGE } = FieldDescriptorProto_Type;
  const { OPTIONAL, REPEATED } = FieldDescriptorProto_Label;
  const file = create(FileDescriptorProtoSchema, {
    name: "redaction_fixture.proto",
    package: "fixture",
    syntax: "proto3",
    messageType: [
      {
        name: "Folder",
        field: [
          { name: "name", number: 1, type: TYPE_STRING, label: OPTIONAL, jsonName: "name" },
          { name: "children", number: 2, type: TYPE_MESSAGE, typeName: ".fixture.Folder.ChildrenEntry", label: REPEATED, jsonName: "children" },
          { name: "items", number: 3, type: TYPE_MESSAGE, typeName: ".fixture.Item", label: REPEATED, jsonName: "items" },
          { name: "sealed", number: 4, type: TYPE_MESSAGE, typeName: ".fixture.Item", label: OPTIONAL, jsonName: "sealed", options: marked() },
          { name: "blobs", number: 5, type: TYPE_BYTES, label: REPEATED, jsonName: "blobs", options: marked() },
          { name: "headers", number: 6, type: TYPE_MESSAGE, typeName: ".fixture.Folder.HeadersEntry", label: REPEATED, jsonName: "headers", options: marked() },
          { name: "pin", number: 7, type: TYPE_INT32, label: OPTIONAL, jsonName: "pin", options: marked() },
        ],
        nestedType: [
          {
            name: "ChildrenEntry",
            options: { mapEntry: true },
            field: [
              { name: "key", number: 1, type: TYPE_STRING, label: OPTIONAL, jsonName: "key" },
              { name: "value", number: 2, type: TYPE_MESSAGE, typeName: ".fixture.Folder", label: OPTIONAL, jsonName: "value" },
            ],
          },
          {
            name: "HeadersEntry",
            options: { mapEntry: true },
            field: [
              { name: "key", number: 1, type: TYPE_STRING, label: OPTIONAL, jsonName: "key" },
              { name: "value", number: 2, type: TYPE_STRING, label: OPTIONAL, jsonName: "value" },
            ],
          },
        ],
      },
      {
        name: "Item",
        field: [
          { name: "label", number: 1, type: TYPE_STRING, label: OPTIONAL, jsonName: "label" },
          { name: "value", number: 2, type: TYPE_STRING, label: OPTIONAL, jsonName: "value", options: marked() },
        ],
      },
    ],
  });
  const registry = createFileRegistry(file, () => undefined);
  return { Folder: registry.getMessage("fixture.Folder")!, Item: registry.getMessage("fixture.Item")! };
}

void t.test("redacted - maps of messages, a marked message, marked lists and maps, a message inside itself", async (t) => {
  const { Folder, Item } = syntheticSchema();
  t.ok(isRedacted(Folder.field.sealed!), "the option is read from a hand-built descriptor too");
  t.notOk(isRedacted(Folder.field.name!));
  const item = (label: string, value: string) => create(Item, { label, value } as never);
  const folder = create(Folder, {
    name: "root",
    items: [item("a", "s1")],
    sealed: item("b", "s2"),
    blobs: [new Uint8Array([1]), new Uint8Array([2, 3])],
    headers: { authorization: "Bearer s3" },
    pin: 1234,
    children: { inbox: { name: "inbox", items: [item("c", "s4")], children: { deep: { name: "deep", sealed: item("d", "s5") } } } },
  } as never) as Record<string, unknown>;
  const copy = redacted(Folder, folder as never) as Record<string, unknown>;
  t.equal(copy.name, "root");
  t.same(copy.items, [item("a", redactedText)]);
  t.equal(copy.sealed, undefined, "a marked message is cleared");
  t.same(copy.blobs, [new Uint8Array(0), new Uint8Array(0)], "each element of a marked list of bytes emptied");
  t.same(copy.headers, { authorization: redactedText }, "map keys kept, values replaced");
  t.equal(copy.pin, 0, "a marked number is cleared");
  const inbox = (copy.children as Record<string, Record<string, unknown>>).inbox!;
  t.same(inbox.items, [item("c", redactedText)], "inside a map of messages");
  t.equal((inbox.children as Record<string, Record<string, unknown>>).deep!.sealed, undefined, "two levels down");
  t.notOk(JSON.stringify(copy, (_, v: unknown) => (typeof v === "bigint" ? String(v) : v)).match(/s[1-5]|1234/), "no secret survives anywhere in the copy");
  t.same(redactedPaths(Folder, folder as never), [
    'children["inbox"].children["deep"].sealed',
    'children["inbox"].items[0].value',
    "items[0].value",
    "sealed",
    "blobs",
    "headers",
    "pin",
  ]);
});

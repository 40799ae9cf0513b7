// Bad input always gets the right code and names the field. Every protovalidate rule of
// pipelines.proto that a client can break, the cross-stage rules of the domain, NOT_FOUND,
// stale etags, forged page tokens, over-size messages and an unexpected failure, as a client sees
// them: the code, a readable message, and a google.rpc.BadRequest detail naming the field.
import t, { type Test } from "tap";
import pg from "pg";
import { create, getOption, type DescField, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { field as validateField, ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import {
  file_jobmesh_v1_pipelines,
  PipelineConfigSchema,
  PipelineService,
  PipelineState,
  Stage,
  type StageConfig,
} from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "./support/mesh.ts";

// A low message limit so that "too big" is cheap to send; every valid request below fits.
const maxMessageBytes = 8192;
// "fatal": the INTERNAL error provoked below is logged at "error" on purpose.
const mesh = await startTestMesh({ JOBMESH_MAX_MESSAGE_BYTES: String(maxMessageBytes), JOBMESH_LOG_LEVEL: "fatal" }, { auth: true });
const url = mesh.pipelines.url;
// Every client signs in as the bootstrap tenant's admin.
const interceptors = [await mesh.auth!.interceptorFor("admin")];
const session = new Http2SessionManager(url);
t.teardown(async () => {
  session.abort();
  await mesh.close();
});

type Pipelines = Client<typeof PipelineService>;
const clients: [string, Pipelines][] = [
  ["Connect JSON over HTTP/1.1", createClient(PipelineService, createConnectTransport({ baseUrl: url, httpVersion: "1.1", interceptors }))],
  ["gRPC over h2c", createClient(PipelineService, createGrpcTransport({ baseUrl: url, sessionManager: session, interceptors }))],
];
const [, client] = clients[0];

type Config = MessageInitShape<typeof PipelineConfigSchema>;
type StageInit = MessageInitShape<typeof PipelineConfigSchema>["stages"] extends (infer S)[] | undefined ? S : never;
const st = (stage: Stage, extra: Partial<Omit<StageConfig, "$typeName" | "stage">> | object = {}): StageInit => ({ stage, ...extra }) as StageInit;
const minimal = (): Config => ({ stages: [st(Stage.INGEST), st(Stage.OUTPUT)] });
const withStage = (index: number, extra: object): Config => {
  const stages = [st(Stage.INGEST), st(Stage.DETECT), st(Stage.PARSE), st(Stage.ENRICH), st(Stage.OUTPUT)];
  stages[index] = { ...stages[index], ...extra } as StageInit;
  return { stages };
};
const seconds = (s: number, nanos = 0) => ({ seconds: BigInt(s), nanos });

/** The error a call fails with; fails the test when the call succeeds. */
async function errorOf(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded");
}

/**
 * Asserts INVALID_ARGUMENT naming `field` in the message and in a BadRequest detail, and `rule`
 * in that detail (and in the message too, where protovalidate wrote it).
 */
function assertNamesField(t: Test, error: ConnectError, field: string, rule?: string, ruleInMessage = false) {
  t.equal(Code[error.code], Code[Code.InvalidArgument], "INVALID_ARGUMENT");
  t.ok(error.rawMessage.includes(field), `message names ${field}: ${error.rawMessage}`);
  if (rule && ruleInMessage) t.ok(error.rawMessage.includes(`${field}: `) && error.rawMessage.includes(`[${rule}]`), `message reads "${field}: ... [${rule}]"`);
  const badRequest = error.findDetails(BadRequestSchema);
  t.equal(badRequest.length, 1, "one google.rpc.BadRequest detail");
  const violation = badRequest[0]?.fieldViolations.find((v) => v.field === field);
  t.ok(violation, `BadRequest names ${field}; has ${badRequest[0]?.fieldViolations.map((v) => v.field).join(", ")}`);
  if (rule) t.ok(violation?.description.includes(`[${rule}]`), `BadRequest description names ${rule}`);
}

// ---- protovalidate rules ------------------------------------------------------------------------

interface RuleCase {
  /** The constrained field, as "Message.field", for the coverage check below. */
  covers: string;
  field: string;
  rule: string;
  call(c: Pipelines): Promise<unknown>;
}

const create1 = (pipeline: object, extra: object = {}) => (c: Pipelines) =>
  c.createPipeline({ pipelineId: "rule-case", pipeline: { config: minimal(), ...pipeline }, ...extra });
const withConfig = (config: Config) => create1({ config });
const labels = (n: number, value = "v") => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, value]));
const x = (n: number, c = "a") => c.repeat(n);

const ruleCases: RuleCase[] = [
  { covers: "CreatePipelineRequest.pipeline_id", field: "pipeline_id", rule: "string.min_len", call: (c) => c.createPipeline({ pipelineId: "a", pipeline: { config: minimal() } }) },
  { covers: "CreatePipelineRequest.pipeline_id", field: "pipeline_id", rule: "string.max_len", call: (c) => c.createPipeline({ pipelineId: x(64), pipeline: { config: minimal() } }) },
  { covers: "CreatePipelineRequest.pipeline_id", field: "pipeline_id", rule: "string.pattern", call: (c) => c.createPipeline({ pipelineId: "Bad_Id", pipeline: { config: minimal() } }) },
  { covers: "CreatePipelineRequest.pipeline", field: "pipeline", rule: "required", call: (c) => c.createPipeline({ pipelineId: "no-pipeline" }) },
  { covers: "CreatePipelineRequest.request_id", field: "request_id", rule: "string.uuid", call: create1({}, { requestId: "not-a-uuid" }) },
  { covers: "Pipeline.display_name", field: "pipeline.display_name", rule: "string.max_len", call: create1({ displayName: x(201) }) },
  { covers: "Pipeline.description", field: "pipeline.description", rule: "string.max_len", call: create1({ description: x(2001) }) },
  { covers: "Pipeline.labels", field: "pipeline.labels", rule: "map.max_pairs", call: create1({ labels: labels(65) }) },
  { covers: "Pipeline.labels", field: 'pipeline.labels["Team"]', rule: "string.pattern", call: create1({ labels: { Team: "x" } }) },
  { covers: "Pipeline.labels", field: `pipeline.labels["${x(64)}"]`, rule: "string.max_len", call: create1({ labels: { [x(64)]: "x" } }) },
  { covers: "Pipeline.labels", field: 'pipeline.labels[""]', rule: "string.min_len", call: create1({ labels: { "": "x" } }) },
  { covers: "Pipeline.labels", field: 'pipeline.labels["team"]', rule: "string.max_len", call: create1({ labels: { team: x(257) } }) },
  { covers: "PipelineConfig.stages", field: "pipeline.config.stages", rule: "repeated.min_items", call: withConfig({ stages: [] }) },
  { covers: "PipelineConfig.stages", field: "pipeline.config.stages", rule: "repeated.max_items", call: withConfig({ stages: [...withStage(0, {}).stages!, st(Stage.OUTPUT)] }) },
  { covers: "StageConfig.stage", field: "pipeline.config.stages[0].stage", rule: "enum.defined_only", call: withConfig({ stages: [st(99 as Stage), st(Stage.OUTPUT)] }) },
  { covers: "StageConfig.stage", field: "pipeline.config.stages[1].stage", rule: "enum.not_in", call: withConfig({ stages: [st(Stage.INGEST), st(Stage.UNSPECIFIED)] }) },
  { covers: "StageConfig.timeout", field: "pipeline.config.stages[0].timeout", rule: "duration.gte_lte", call: withConfig(withStage(0, { timeout: seconds(0, 50_000_000) })) },
  { covers: "StageConfig.timeout", field: "pipeline.config.stages[4].timeout", rule: "duration.gte_lte", call: withConfig(withStage(4, { timeout: seconds(3601) })) },
  { covers: "RetryPolicy.max_attempts", field: "pipeline.config.stages[1].retry.max_attempts", rule: "int32.gte_lte", call: withConfig(withStage(1, { retry: { maxAttempts: 21 } })) },
  { covers: "RetryPolicy.max_attempts", field: "pipeline.config.stages[1].retry.max_attempts", rule: "int32.gte_lte", call: withConfig(withStage(1, { retry: { maxAttempts: -1 } })) },
  { covers: "RetryPolicy.initial_backoff", field: "pipeline.config.stages[2].retry.initial_backoff", rule: "duration.gte_lte", call: withConfig(withStage(2, { retry: { initialBackoff: seconds(0, 5_000_000) } })) },
  { covers: "RetryPolicy.max_backoff", field: "pipeline.config.stages[2].retry.max_backoff", rule: "duration.gte_lte", call: withConfig(withStage(2, { retry: { maxBackoff: seconds(86_401) } })) },
  { covers: "RetryPolicy.backoff_multiplier", field: "pipeline.config.stages[3].retry.backoff_multiplier", rule: "double.gte_lte", call: withConfig(withStage(3, { retry: { backoffMultiplier: 11 } })) },
  { covers: "RetryPolicy.jitter", field: "pipeline.config.stages[3].retry.jitter", rule: "double.gte_lte", call: withConfig(withStage(3, { retry: { jitter: 1.5 } })) },
  { covers: "IngestOptions.max_bytes", field: "pipeline.config.stages[0].options.ingest.max_bytes", rule: "int64.gte_lte", call: withConfig(withStage(0, { options: { options: { case: "ingest", value: { maxBytes: 52_428_801n } } } })) },
  { covers: "IngestOptions.fetch_timeout", field: "pipeline.config.stages[0].options.ingest.fetch_timeout", rule: "duration.gte_lte", call: withConfig(withStage(0, { options: { options: { case: "ingest", value: { fetchTimeout: seconds(301) } } } })) },
  { covers: "ParseOptions.max_pages", field: "pipeline.config.stages[2].options.parse.max_pages", rule: "int32.gte_lte", call: withConfig(withStage(2, { options: { options: { case: "parse", value: { maxPages: 10_001 } } } })) },
  { covers: "ParseOptions.allowed_media_types", field: "pipeline.config.stages[2].options.parse.allowed_media_types[1]", rule: "string.pattern", call: withConfig(withStage(2, { options: { options: { case: "parse", value: { allowedMediaTypes: ["text/html", "Text/HTML"] } } } })) },
  { covers: "ParseOptions.allowed_media_types", field: "pipeline.config.stages[2].options.parse.allowed_media_types", rule: "repeated.max_items", call: withConfig(withStage(2, { options: { options: { case: "parse", value: { allowedMediaTypes: Array(33).fill("text/plain") } } } })) },
  { covers: "EnrichOptions.keyword_count", field: "pipeline.config.stages[3].options.enrich.keyword_count", rule: "int32.gte_lte", call: withConfig(withStage(3, { options: { options: { case: "enrich", value: { keywordCount: 51 } } } })) },
  { covers: "EnrichOptions.summary_sentences", field: "pipeline.config.stages[3].options.enrich.summary_sentences", rule: "int32.gte_lte", call: withConfig(withStage(3, { options: { options: { case: "enrich", value: { summarySentences: 21 } } } })) },
  { covers: "OutputOptions.result_retention", field: "pipeline.config.stages[4].options.output.result_retention", rule: "duration.gte_lte", call: withConfig(withStage(4, { options: { options: { case: "output", value: { resultRetention: seconds(59) } } } })) },
  { covers: "OutputOptions.result_retention", field: "pipeline.config.stages[4].options.output.result_retention", rule: "duration.gte_lte", call: withConfig(withStage(4, { options: { options: { case: "output", value: { resultRetention: seconds(31_536_001) } } } })) },
  { covers: "GetPipelineRequest.name", field: "name", rule: "string.pattern", call: (c) => c.getPipeline({ name: "pipelines/Bad" }) },
  { covers: "GetPipelineRequest.name", field: "name", rule: "string.max_len", call: (c) => c.getPipeline({ name: `pipelines/${x(71)}` }) },
  { covers: "GetPipelineRequest.version", field: "version", rule: "int32.gte", call: (c) => c.getPipeline({ name: "pipelines/document-default", version: -1 }) },
  { covers: "ListPipelinesRequest.page_size", field: "page_size", rule: "int32.gte_lte", call: (c) => c.listPipelines({ pageSize: 1001 }) },
  { covers: "ListPipelinesRequest.page_size", field: "page_size", rule: "int32.gte_lte", call: (c) => c.listPipelines({ pageSize: -1 }) },
  { covers: "ListPipelinesRequest.page_token", field: "page_token", rule: "string.max_len", call: (c) => c.listPipelines({ pageToken: x(1025) }) },
  { covers: "ListPipelinesRequest.filter", field: "filter", rule: "string.max_len", call: (c) => c.listPipelines({ filter: x(1025) }) },
  { covers: "ListPipelinesRequest.order_by", field: "order_by", rule: "string.max_len", call: (c) => c.listPipelines({ orderBy: x(129) }) },
  { covers: "UpdatePipelineRequest.pipeline", field: "pipeline", rule: "required", call: (c) => c.updatePipeline({ updateMask: { paths: ["description"] } }) },
  // The same Pipeline rules hold on update.
  { covers: "Pipeline.labels", field: 'pipeline.labels["Team"]', rule: "string.pattern", call: (c) => c.updatePipeline({ pipeline: { name: "pipelines/rule-case", labels: { Team: "x" } }, updateMask: { paths: ["labels"] } }) },
  { covers: "DeletePipelineRequest.name", field: "name", rule: "string.pattern", call: (c) => c.deletePipeline({ name: "rule-case" }) },
  { covers: "DeletePipelineRequest.etag", field: "etag", rule: "string.max_len", call: (c) => c.deletePipeline({ name: "pipelines/rule-case", etag: x(129) }) },
  { covers: "ListPipelineVersionsRequest.parent", field: "parent", rule: "string.pattern", call: (c) => c.listPipelineVersions({ parent: "pipelines/" }) },
  { covers: "ListPipelineVersionsRequest.page_size", field: "page_size", rule: "int32.gte_lte", call: (c) => c.listPipelineVersions({ parent: "pipelines/document-default", pageSize: 1001 }) },
  { covers: "ListPipelineVersionsRequest.page_token", field: "page_token", rule: "string.max_len", call: (c) => c.listPipelineVersions({ parent: "pipelines/document-default", pageToken: x(1025) }) },
];

t.test("validation - every constrained field of pipelines.proto has a case here", async (t) => {
  const isConstrained = (f: DescField) => {
    const rules = getOption(f, validateField);
    return rules.required || rules.type.case !== undefined || rules.cel.length > 0;
  };
  const constrained = file_jobmesh_v1_pipelines.messages.flatMap((m) => m.fields.filter(isConstrained).map((f) => `${m.name}.${f.name}`));
  t.ok(constrained.length > 30, `${constrained.length} constrained fields`);
  const covered = new Set(ruleCases.map((c) => c.covers));
  t.same(constrained.filter((f) => !covered.has(f)), [], "no constrained field without a case");
  t.same([...covered].filter((f) => !constrained.includes(f)), [], "no case for a field that is not constrained");
});

for (const [transport, c] of clients) {
  t.test(`validation - each broken rule is INVALID_ARGUMENT naming the field (${transport})`, async (t) => {
    for (const rc of ruleCases) {
      await t.test(`${rc.field} ${rc.rule}`, async (t) => {
        const error = await errorOf(rc.call(c));
        assertNamesField(t, error, rc.field, rc.rule, true);
        const violations = error.findDetails(ViolationsSchema)[0]?.violations ?? [];
        t.ok(violations.some((v) => v.ruleId === rc.rule), "buf.validate.Violations carries the rule id");
      });
    }
  });
}

t.test("validation - NUL characters are INVALID_ARGUMENT naming the field, not INTERNAL", async (t) => {
  assertNamesField(t, await errorOf(client.createPipeline({ pipelineId: "nul-name", pipeline: { displayName: "a\u0000b", config: minimal() } })), "pipeline.display_name");
  assertNamesField(t, await errorOf(client.createPipeline({ pipelineId: "nul-label", pipeline: { labels: { team: "\u0000" }, config: minimal() } })), 'pipeline.labels["team"]');
  assertNamesField(t, await errorOf(client.listPipelines({ filter: 'display_name = "a\\u0000"' })), "filter");
});

// ---- rules of the domain ------------------------------------------------------------------------

const domainCases: { name: string; config: Config; field: string; rule: string }[] = [
  { name: "ingest first", config: { stages: [st(Stage.DETECT), st(Stage.PARSE), st(Stage.OUTPUT)] }, field: "pipeline.config.stages[0].stage", rule: "stages.ingest_first" },
  { name: "output last", config: { stages: [st(Stage.INGEST), st(Stage.DETECT)] }, field: "pipeline.config.stages[1].stage", rule: "stages.output_last" },
  { name: "no duplicates", config: { stages: [st(Stage.INGEST), st(Stage.DETECT), st(Stage.DETECT), st(Stage.OUTPUT)] }, field: "pipeline.config.stages[2].stage", rule: "stages.unique" },
  { name: "in order", config: { stages: [st(Stage.INGEST), st(Stage.DETECT), st(Stage.ENRICH), st(Stage.PARSE), st(Stage.OUTPUT)] }, field: "pipeline.config.stages[3].stage", rule: "stages.order" },
  { name: "a stage's input comes first", config: { stages: [st(Stage.INGEST), st(Stage.PARSE), st(Stage.OUTPUT)] }, field: "pipeline.config.stages[1].stage", rule: "stages.requires" },
  {
    name: "options for the wrong stage",
    config: { stages: [st(Stage.INGEST, { options: { options: { case: "parse", value: { maxPages: 3 } } } }), st(Stage.OUTPUT)] },
    field: "pipeline.config.stages[0].options",
    rule: "stages.options_match",
  },
  {
    name: "initial backoff above max backoff",
    config: { stages: [st(Stage.INGEST), st(Stage.OUTPUT, { retry: { initialBackoff: seconds(2), maxBackoff: seconds(1) } })] },
    field: "pipeline.config.stages[1].retry.initial_backoff",
    rule: "retry.backoff_order",
  },
];

t.test("domain rules - create is INVALID_ARGUMENT naming pipeline.config.stages[i]", async (t) => {
  for (const dc of domainCases) {
    await t.test(dc.name, async (t) => {
      assertNamesField(t, await errorOf(client.createPipeline({ pipelineId: "domain-case", pipeline: { config: dc.config } })), dc.field, dc.rule);
    });
  }
  await t.test("and nothing was stored", async (t) => {
    t.equal((await errorOf(client.getPipeline({ name: "pipelines/domain-case" }))).code, Code.NotFound);
  });
});

t.test("domain rules - update is INVALID_ARGUMENT naming the same fields", async (t) => {
  const { pipeline } = await client.createPipeline({ pipelineId: "domain-update", pipeline: { config: minimal() } });
  for (const dc of domainCases) {
    const error = await errorOf(client.updatePipeline({ pipeline: { name: pipeline!.name, etag: pipeline!.etag, config: dc.config }, updateMask: { paths: ["config"] } }));
    assertNamesField(t, error, dc.field, dc.rule);
  }
  t.equal((await client.getPipeline({ name: pipeline!.name })).pipeline?.version, 1, "no version was written");
  assertNamesField(t, await errorOf(client.updatePipeline({ pipeline: { name: pipeline!.name }, updateMask: { paths: ["version"] } })), "update_mask");
});

t.test("ValidatePipeline - returns every violation as data, field rules and domain rules together", async (t) => {
  const res = await client.validatePipeline({
    config: {
      stages: [
        st(Stage.DETECT, { timeout: seconds(3601) }),
        st(Stage.DETECT),
        st(Stage.INGEST, { options: { options: { case: "enrich", value: {} } } }),
      ],
    },
  });
  t.equal(res.valid, false);
  t.same(
    res.violations.map((v) => `${v.field} ${v.rule}`).sort(),
    [
      "config.stages[0].stage stages.ingest_first",
      "config.stages[0].timeout duration.gte_lte",
      "config.stages[1].stage stages.unique",
      "config.stages[2].options stages.options_match",
      "config.stages[2].stage stages.order",
      "config.stages[2].stage stages.output_last",
    ],
  );
  t.ok(res.violations.every((v) => v.message.length > 0), "each violation says what is wrong");

  const ok = await client.validatePipeline({ config: withStage(0, {}) });
  t.same([ok.valid, ok.violations], [true, []]);
  const missing = await client.validatePipeline({});
  t.equal(missing.valid, false);
  t.same(missing.violations.map((v) => `${v.field} ${v.rule}`), ["config required"]);
});

// ---- not found, conflicts, preconditions --------------------------------------------------------

t.test("NOT_FOUND - for every method that names a pipeline that does not exist", async (t) => {
  const name = "pipelines/nowhere";
  const calls: [string, () => Promise<unknown>][] = [
    ["GetPipeline", () => client.getPipeline({ name })],
    ["GetPipeline version", () => client.getPipeline({ name: "pipelines/document-default", version: 99 })],
    ["UpdatePipeline", () => client.updatePipeline({ pipeline: { name, description: "x" }, updateMask: { paths: ["description"] } })],
    ["DeletePipeline", () => client.deletePipeline({ name })],
    ["ListPipelineVersions", () => client.listPipelineVersions({ parent: name })],
  ];
  for (const [what, call] of calls) {
    const error = await errorOf(call());
    t.equal(Code[error.code], Code[Code.NotFound], what);
    t.match(error.rawMessage, /pipelines\/(nowhere|document-default)/, `${what} names the pipeline`);
  }
});

t.test("ABORTED - a stale etag on update and on delete; FAILED_PRECONDITION once deleted or built in", async (t) => {
  const v1 = (await client.createPipeline({ pipelineId: "etags", pipeline: { config: minimal() } })).pipeline!;
  const v2 = (await client.updatePipeline({ pipeline: { name: v1.name, etag: v1.etag, description: "second" }, updateMask: { paths: ["description"] } })).pipeline!;
  t.not(v2.etag, v1.etag);
  const staleUpdate = await errorOf(client.updatePipeline({ pipeline: { name: v1.name, etag: v1.etag, description: "lost" }, updateMask: { paths: ["description"] } }));
  t.equal(Code[staleUpdate.code], Code[Code.Aborted]);
  t.match(staleUpdate.rawMessage, /etag/);
  t.equal(Code[(await errorOf(client.deletePipeline({ name: v1.name, etag: v1.etag }))).code], Code[Code.Aborted], "stale delete");
  t.equal((await client.getPipeline({ name: v1.name })).pipeline?.description, "second", "nothing lost");

  const deleted = (await client.deletePipeline({ name: v1.name, etag: v2.etag })).pipeline!;
  t.equal(deleted.state, PipelineState.DELETED);
  const afterDelete = await errorOf(client.updatePipeline({ pipeline: { name: v1.name, etag: v2.etag, description: "x" }, updateMask: { paths: ["description"] } }));
  t.equal(Code[afterDelete.code], Code[Code.FailedPrecondition]);
  t.equal(Code[(await errorOf(client.deletePipeline({ name: "pipelines/document-default" }))).code], Code[Code.FailedPrecondition], "built in");
});

t.test("ALREADY_EXISTS - a request_id reused for a different pipeline", async (t) => {
  const requestId = "0b7e6c1a-3f2d-4e5c-9a8b-7c6d5e4f3a2b";
  await client.createPipeline({ pipelineId: "reused-a", pipeline: { config: minimal() }, requestId });
  const error = await errorOf(client.createPipeline({ pipelineId: "reused-b", pipeline: { config: minimal() }, requestId }));
  t.equal(Code[error.code], Code[Code.AlreadyExists]);
  t.match(error.rawMessage, /request_id/);
});

// ---- pagination and page tokens -----------------------------------------------------------------

const fruits = ["pg-apple", "pg-apricot", "pg-banana", "pg-cherry", "pg-date"];
const stoneFruit = new Set(["pg-apricot", "pg-cherry", "pg-date"]);

t.test("list - pages, order, filters and deleted pipelines", async (t) => {
  for (const id of fruits) {
    await client.createPipeline({
      pipelineId: id,
      pipeline: { displayName: id.toUpperCase(), labels: { suite: "paging", ...(stoneFruit.has(id) ? { kind: "stone" } : {}) }, config: minimal() },
    });
  }
  const all = async (req: { filter: string; orderBy?: string; showDeleted?: boolean }, pageSize = 2) => {
    const pages: string[][] = [];
    let pageToken = "";
    do {
      const res = await client.listPipelines({ ...req, pageSize, pageToken });
      pages.push(res.pipelines.map((p) => p.name.replace("pipelines/", "")));
      pageToken = res.nextPageToken;
      if (pages.length > 10) throw new Error("pagination does not end");
    } while (pageToken);
    return pages;
  };
  const suite = 'labels.suite = "paging"';

  await t.test("page_size 2 over 5 pipelines is 3 pages, each pipeline once, newest first", async (t) => {
    const pages = await all({ filter: suite });
    t.same(pages.map((p) => p.length), [2, 2, 1]);
    t.same(pages.flat(), [...fruits].reverse());
  });
  await t.test("order_by name, name desc, create_time and create_time desc", async (t) => {
    t.same((await all({ filter: suite, orderBy: "name" })).flat(), fruits);
    t.same((await all({ filter: suite, orderBy: "name desc" })).flat(), [...fruits].reverse());
    t.same((await all({ filter: suite, orderBy: "create_time" }, 3)).flat(), fruits);
    t.same((await all({ filter: suite, orderBy: "create_time desc" }, 1)).flat(), [...fruits].reverse());
  });
  await t.test("filter by name prefix, by label, and both", async (t) => {
    t.same((await all({ filter: 'name:"pg-ap*"', orderBy: "name" })).flat(), ["pg-apple", "pg-apricot"]);
    t.same((await all({ filter: 'name = "pipelines/pg-banana"' })).flat(), ["pg-banana"]);
    t.same((await all({ filter: 'labels.kind = "stone"', orderBy: "name" }, 1)).flat(), ["pg-apricot", "pg-cherry", "pg-date"]);
    t.same((await all({ filter: 'labels.kind = "stone" AND name:"pg-ap*"' })).flat(), ["pg-apricot"]);
  });
  await t.test("state = DELETED lists a deleted pipeline; plain lists leave it out", async (t) => {
    await client.deletePipeline({ name: "pipelines/pg-date" });
    t.same((await all({ filter: suite, orderBy: "name" })).flat(), fruits.slice(0, 4));
    t.same((await all({ filter: `${suite} AND state = DELETED` })).flat(), ["pg-date"]);
    t.same((await all({ filter: `${suite} AND state = ACTIVE`, orderBy: "name" })).flat(), fruits.slice(0, 4));
    t.same((await all({ filter: suite, orderBy: "name", showDeleted: true })).flat(), fruits);
    const [deleted] = (await client.listPipelines({ filter: `${suite} AND state = DELETED` })).pipelines;
    t.equal(deleted?.state, PipelineState.DELETED);
    t.ok(deleted?.deleteTime, "delete_time is set");
  });
  await t.test("an unknown filter field or order_by is INVALID_ARGUMENT naming it", async (t) => {
    assertNamesField(t, await errorOf(client.listPipelines({ filter: 'colour = "red"' })), "filter");
    assertNamesField(t, await errorOf(client.listPipelines({ filter: 'labels.kind = "\\u00"' })), "filter");
    assertNamesField(t, await errorOf(client.listPipelines({ orderBy: "colour" })), "order_by");
  });
});

t.test("page_token - tampered, foreign or reused with another query is INVALID_ARGUMENT", async (t) => {
  const query = { filter: 'labels.suite = "paging"', orderBy: "name", pageSize: 1 };
  const first = await client.listPipelines(query);
  const token = first.nextPageToken;
  t.ok(token, "a first page has a next token");
  t.equal((await client.listPipelines({ ...query, pageToken: token })).pipelines.length, 1, "the untouched token works");

  const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === "A" ? "B" : "A") + s.slice(i + 1);
  const dot = token.indexOf(".");
  const forged: [string, string][] = [
    ["a character of the position flipped", flip(token, Math.floor(dot / 2))],
    ["a character of the signature flipped", flip(token, dot + 5)],
    ["the signature cut off", token.slice(0, dot)],
    ["garbage", "not-a-token"],
  ];
  for (const [what, pageToken] of forged) {
    t.not(pageToken, token);
    assertNamesField(t, await errorOf(client.listPipelines({ ...query, pageToken })), "page_token");
    t.pass(what);
  }
  const other: [string, object][] = [
    ["a different filter", { filter: 'labels.suite = "other"' }],
    ["a different order_by", { orderBy: "create_time" }],
    ["show_deleted changed", { showDeleted: true }],
  ];
  for (const [what, change] of other) {
    const error = await errorOf(client.listPipelines({ ...query, ...change, pageToken: token }));
    assertNamesField(t, error, "page_token");
    t.pass(what);
  }

  const versions = await client.createPipeline({ pipelineId: "versioned", pipeline: { config: minimal() } });
  let etag = versions.pipeline!.etag;
  for (const description of ["two", "three"]) {
    etag = (await client.updatePipeline({ pipeline: { name: "pipelines/versioned", etag, description }, updateMask: { paths: ["description"] } })).pipeline!.etag;
  }
  const page1 = await client.listPipelineVersions({ parent: "pipelines/versioned", pageSize: 2 });
  t.same(page1.versions.map((v) => v.version), [3, 2]);
  const page2 = await client.listPipelineVersions({ parent: "pipelines/versioned", pageSize: 2, pageToken: page1.nextPageToken });
  t.same([page2.versions.map((v) => v.version), page2.nextPageToken], [[1], ""]);
  assertNamesField(t, await errorOf(client.listPipelineVersions({ parent: "pipelines/pg-apple", pageToken: page1.nextPageToken })), "page_token");
  assertNamesField(t, await errorOf(client.listPipelineVersions({ parent: "pipelines/versioned", pageToken: token })), "page_token");
  assertNamesField(t, await errorOf(client.listPipelines({ ...query, pageToken: page1.nextPageToken })), "page_token");
});

// ---- limits and the unexpected ------------------------------------------------------------------

t.test("RESOURCE_EXHAUSTED - a request over the server's message limit, on every protocol", async (t) => {
  // Valid in every field, only too big: 64 labels of 200 characters is ~13 KiB.
  const big = { pipelineId: "too-big", pipeline: { labels: labels(64, x(200)), config: minimal() } };
  const transports: [string, Pipelines][] = [
    ...clients,
    ["Connect binary over h2c", createClient(PipelineService, createConnectTransport({ baseUrl: url, httpVersion: "2", useBinaryFormat: true, sessionManager: session, interceptors }))],
    ["gRPC-Web over HTTP/1.1", createClient(PipelineService, createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1", interceptors }))],
  ];
  for (const [name, c] of transports) {
    const error = await errorOf(c.createPipeline(big));
    t.equal(Code[error.code], Code[Code.ResourceExhausted], name);
  }
  // The same shape under the limit goes through, so the limit is what refused it.
  const fits = await client.createPipeline({ ...big, pipeline: { ...big.pipeline, labels: labels(64, x(40)) } });
  t.equal(fits.pipeline?.name, "pipelines/too-big");
});

t.test("INTERNAL - an unexpected failure shows a generic message with the trace id and no detail", async (t) => {
  // Take a table away under the running service: the kind of fault no domain error describes.
  const db = new pg.Client({ connectionString: mesh.isolated.databaseUrl });
  await db.connect();
  await db.query("ALTER TABLE pipeline_versions RENAME TO pipeline_versions_away");
  let error: ConnectError;
  try {
    error = await errorOf(client.getPipeline({ name: "pipelines/never-cached" }));
  } finally {
    await db.query("ALTER TABLE pipeline_versions_away RENAME TO pipeline_versions");
    await db.end();
  }
  t.equal(Code[error.code], Code[Code.Internal]);
  const match = /^internal error \(trace ([0-9a-f]{32})\)$/.exec(error.rawMessage);
  t.ok(match, `generic message: ${error.rawMessage}`);
  t.notMatch(error.rawMessage, /pipeline_versions|relation|select/i, "no SQL detail leaks");
  t.same(error.details, [], "no details");
  const traceId = match?.[1];
  t.match(error.metadata.get("traceparent"), new RegExp(`^00-${traceId}-`), "the traceparent names the same trace");
  const span = mesh.spans.getFinishedSpans().find((s) => s.spanContext().traceId === traceId);
  t.equal(span?.name, "jobmesh.v1.PipelineService/GetPipeline", "the server span of that trace");
  t.equal(span?.attributes["rpc.grpc.status_code"], "Internal");
  t.equal((await client.getPipeline({ name: "pipelines/document-default" })).pipeline?.name, "pipelines/document-default", "the service recovers");
});

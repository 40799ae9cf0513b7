/**
 * The role × RPC matrix. The expected minimum role of every RPC of every service in gen/ is
 * written out below; a new RPC without a row fails this test. Each row is checked against the
 * decision function for every role and no credential, and, for the services this test serves
 * (auth, pipelines, jobs), end to end through the real servers with tokens and API keys.
 */
import t from "tap";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { ServerReflection } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { AuthService, Role } from "../gen/jobmesh/v1/auth_pb.js";
import { JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { accessRuleOf, decide, meshServices, type Decision, type RoleName } from "../internal/contract/index.ts";
import { startTestMesh } from "./support/mesh.ts";

type Needs = "public" | RoleName;

const expected: Record<string, Needs> = {
  "jobmesh.v1.JobService.CreateJob": "operator",
  "jobmesh.v1.JobService.CreateJobs": "operator",
  "jobmesh.v1.JobService.GetJob": "viewer",
  "jobmesh.v1.JobService.ListJobs": "viewer",
  "jobmesh.v1.JobService.CancelJob": "operator",
  "jobmesh.v1.JobService.RetryJob": "operator",
  "jobmesh.v1.JobService.DeleteJob": "operator",
  "jobmesh.v1.JobService.GetJobResult": "viewer",
  "jobmesh.v1.JobService.DownloadJobResult": "viewer",
  "jobmesh.v1.JobService.WatchJob": "viewer",
  "jobmesh.v1.JobService.UploadDocument": "operator",
  "jobmesh.v1.PipelineService.CreatePipeline": "operator",
  "jobmesh.v1.PipelineService.GetPipeline": "viewer",
  "jobmesh.v1.PipelineService.ListPipelines": "viewer",
  "jobmesh.v1.PipelineService.UpdatePipeline": "operator",
  "jobmesh.v1.PipelineService.DeletePipeline": "operator",
  "jobmesh.v1.PipelineService.ListPipelineVersions": "viewer",
  "jobmesh.v1.PipelineService.ValidatePipeline": "viewer",
  "jobmesh.v1.AuthService.Login": "public",
  "jobmesh.v1.AuthService.RefreshToken": "public",
  "jobmesh.v1.AuthService.Logout": "viewer",
  "jobmesh.v1.AuthService.GetJwks": "public",
  "jobmesh.v1.AuthService.GetCurrentIdentity": "viewer",
  "jobmesh.v1.AuthService.CreateUser": "admin",
  "jobmesh.v1.AuthService.GetUser": "admin",
  "jobmesh.v1.AuthService.ListUsers": "admin",
  "jobmesh.v1.AuthService.UpdateUser": "admin",
  "jobmesh.v1.AuthService.DeleteUser": "admin",
  "jobmesh.v1.AuthService.CreateApiKey": "admin",
  "jobmesh.v1.AuthService.GetApiKey": "admin",
  "jobmesh.v1.AuthService.ListApiKeys": "admin",
  "jobmesh.v1.AuthService.RevokeApiKey": "admin",
  "jobmesh.v1.AuthService.ExchangeApiKey": "public",
  "jobmesh.v1.AuthService.ChangePassword": "viewer",
  "jobmesh.v1.AuthService.ResetUserPassword": "admin",
  "jobmesh.v1.AuditService.ListAuditEvents": "admin",
  "jobmesh.v1.AuditService.GetAuditEvent": "admin",
  "jobmesh.v1.AuditService.VerifyAuditChain": "admin",
  "jobmesh.v1.AuditService.ExportAuditEvents": "admin",
  "jobmesh.v1.AuditService.ListAuditCheckpoints": "admin",
  "jobmesh.v1.WebhookService.CreateWebhook": "admin",
  "jobmesh.v1.WebhookService.GetWebhook": "admin",
  "jobmesh.v1.WebhookService.ListWebhooks": "admin",
  "jobmesh.v1.WebhookService.UpdateWebhook": "admin",
  "jobmesh.v1.WebhookService.DeleteWebhook": "admin",
  "jobmesh.v1.WebhookService.RotateWebhookSecret": "admin",
  "jobmesh.v1.WebhookService.ListWebhookDeliveries": "admin",
  "jobmesh.v1.WebhookService.GetWebhookDelivery": "admin",
  "jobmesh.v1.WebhookService.ReplayWebhookDelivery": "admin",
  "jobmesh.v1.WebhookService.TestWebhook": "admin",
  "jobmesh.v1.WebhookService.RecoverWebhookDeliveries": "admin",
};

const callers = ["none", "viewer", "operator", "admin"] as const;
type CallerName = (typeof callers)[number];
const rank: Record<Needs | CallerName, number> = { none: -1, public: -1, viewer: 0, operator: 1, admin: 2 };

function outcome(needs: Needs, caller: CallerName): Decision {
  if (needs === "public") return "allow";
  if (caller === "none") return "unauthenticated";
  return rank[caller] >= rank[needs] ? "allow" : "permission_denied";
}

const fullName = (m: DescMethod) => `${m.parent.typeName}.${m.name}`;
const allMethods = meshServices.flatMap((s) => s.methods);

t.test("matrix - every RPC of every service has a row, and no row names a missing RPC", async (t) => {
  for (const method of allMethods) t.ok(expected[fullName(method)], `row for ${fullName(method)}`);
  const known = new Set(allMethods.map(fullName));
  for (const name of Object.keys(expected)) t.ok(known.has(name), `${name} exists`);
});

t.test("matrix - the decision for every RPC × {none, viewer, operator, admin} matches its row", async (t) => {
  for (const method of allMethods) {
    const needs = expected[fullName(method)];
    if (!needs) continue; // reported by the test above
    const rule = accessRuleOf(method);
    for (const caller of callers) {
      const roles = caller === "none" ? undefined : [caller];
      t.equal(decide(rule, roles), outcome(needs, caller), `${fullName(method)} as ${caller}`);
    }
  }
});

const mesh = await startTestMesh({}, { auth: true, jobs: true, workers: 0, relay: false });
t.teardown(() => mesh.close());
const auth = mesh.auth!;

const served: [DescService, string][] = [
  [AuthService, auth.server.url],
  [PipelineService, mesh.pipelines.url],
  [JobService, mesh.jobs!.url],
];

/** Calls a method with an empty request and returns the status code (or "ok"). */
async function call(service: DescService, url: string, method: DescMethod, headers: Record<string, string>): Promise<Code | "ok"> {
  const client = createClient(service, createGrpcTransport({ baseUrl: url })) as unknown as Record<string, (req: unknown, opts: unknown) => unknown>;
  const fn = client[method.localName];
  try {
    if (method.methodKind === "server_streaming") {
      for await (const _ of fn({}, { headers, timeoutMs: 5_000 }) as AsyncIterable<unknown>) break;
    } else if (method.methodKind === "client_streaming") {
      await fn((async function* () {})(), { headers, timeoutMs: 5_000 });
    } else {
      await fn({}, { headers, timeoutMs: 5_000 });
    }
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

const roleEnum: Record<RoleName, Role> = { viewer: Role.VIEWER, operator: Role.OPERATOR, admin: Role.ADMIN };

t.test("matrix - end to end over gRPC, with access tokens and with API keys, for every served RPC", async (t) => {
  const admin = await auth.headersFor("admin");
  const credentials: { label: string; caller: CallerName; headers: Record<string, string> }[] = [{ label: "no credential", caller: "none", headers: {} }];
  for (const role of ["viewer", "operator", "admin"] as const) {
    credentials.push({ label: `${role} token`, caller: role, headers: await auth.headersFor(role) });
    const { secret } = await auth.client.createApiKey({ apiKey: { displayName: `matrix-${role}`, roles: [roleEnum[role]] } }, { headers: admin });
    credentials.push({ label: `${role} API key`, caller: role, headers: { "x-api-key": secret } });
  }
  for (const [service, url] of served) {
    for (const method of service.methods) {
      const needs = expected[fullName(method)];
      if (!needs) continue;
      for (const credential of credentials) {
        const code = await call(service, url, method, credential.headers);
        const want = outcome(needs, credential.caller);
        const what = `${fullName(method)} with ${credential.label} → ${typeof code === "number" ? Code[code] : code}`;
        if (want === "unauthenticated") t.equal(code, Code.Unauthenticated, what);
        else if (want === "permission_denied") t.equal(code, Code.PermissionDenied, what);
        else t.ok(code !== Code.Unauthenticated && code !== Code.PermissionDenied, what);
      }
    }
  }
});

t.test("matrix - health, reflection and /readyz answer without credentials on an enforcing server", async (t) => {
  for (const url of [mesh.pipelines.url, auth.server.url, mesh.jobs!.url]) {
    const transport = createGrpcTransport({ baseUrl: url });
    const health = await createClient(Health, transport).check({ service: "" });
    // It answers (whether SERVING yet or not) instead of refusing an anonymous caller.
    t.not(health.status, HealthCheckResponse_ServingStatus.UNKNOWN, `health on ${url}`);
    const reflection = createClient(ServerReflection, transport).serverReflectionInfo(
      (async function* () {
        yield { messageRequest: { case: "listServices" as const, value: "" } };
      })(),
    );
    for await (const res of reflection) {
      t.equal(res.messageResponse.case, "listServicesResponse", `reflection on ${url}`);
      break;
    }
    t.equal((await fetch(new URL("/readyz", url))).status, 200);
  }
});

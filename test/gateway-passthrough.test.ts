/**
 * Connect and gRPC-Web calls through the gateway, refused at the edge: a client generated from
 * our protos reads the refusal in its own protocol (code and message), as if the service had
 * answered, whatever the edge refused it for (no credential, a missing permission, a body that
 * does not parse, a body over the limit, a non-POST).
 */
import t from "tap";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { compressionGzip, createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startGatewayMesh } from "./support/gateway.ts";

const { mesh, url } = await startGatewayMesh(t, { env: { JOBMESH_GATEWAY_MAX_BODY_BYTES: "4096" } });
const auth = mesh.auth!;

function transports(interceptors: Parameters<typeof createConnectTransport>[0]["interceptors"] = []): Record<string, Transport> {
  return {
    "Connect JSON": createConnectTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: false, interceptors }),
    "Connect binary": createConnectTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: true, interceptors }),
    "gRPC-Web": createGrpcWebTransport({ baseUrl: url, httpVersion: "1.1", interceptors }),
  };
}

async function refusal(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call was not refused");
}

t.test("edge refusals reach a generated client as its own protocol's error: the code and the message", async (t) => {
  for (const [name, transport] of Object.entries(transports())) {
    const error = await refusal(createClient(PipelineService, transport).getPipeline({ name: "pipelines/document-default" }));
    t.equal(error.code, Code.Unauthenticated, `${name}: no credential is UNAUTHENTICATED`);
    t.match(error.rawMessage, /needs credentials/, `${name}: with the edge's message`);
  }
  for (const [name, transport] of Object.entries(transports([await auth.interceptorFor("viewer")]))) {
    const error = await refusal(createClient(PipelineService, transport).deletePipeline({ name: "pipelines/nope" }));
    t.equal(error.code, Code.PermissionDenied, `${name}: a viewer's write is PERMISSION_DENIED`);
    t.match(error.rawMessage, /pipelines\.delete/, `${name}: naming the permission`);
    const read = await createClient(PipelineService, transport).getPipeline({ name: "pipelines/document-default" }).catch((e: unknown) => ConnectError.from(e));
    t.notOk(read instanceof ConnectError, `${name}: the viewer's read passes`);
  }
});

t.test("a Connect binary body that does not parse is INVALID_ARGUMENT at the edge, not the service's INTERNAL", async (t) => {
  const res = await fetch(`${url}/jobmesh.v1.PipelineService/GetPipeline`, {
    method: "POST",
    headers: { ...(await auth.headersFor("admin")), "content-type": "application/proto", "connect-protocol-version": "1" },
    body: new Uint8Array([0]),
  });
  t.equal(res.status, 400);
  const body = (await res.json()) as { code: string; message: string };
  t.equal(body.code, "invalid_argument");
  t.match(body.message, /not a valid jobmesh\.v1\.GetPipelineRequest/);
});

t.test("a pass-through body over JOBMESH_GATEWAY_MAX_BODY_BYTES is RESOURCE_EXHAUSTED in the client's protocol", async (t) => {
  for (const [name, transport] of Object.entries(transports([await auth.interceptorFor("admin")]))) {
    const error = await refusal(createClient(PipelineService, transport).getPipeline({ name: `pipelines/${"x".repeat(8000)}` }));
    t.equal(error.code, Code.ResourceExhausted, name);
  }
});

t.test("a pass-through path answers only POST: anything else is 405 with Allow: POST", async (t) => {
  const res = await fetch(`${url}/jobmesh.v1.PipelineService/GetPipeline`, { method: "PUT", headers: await auth.headersFor("admin") });
  t.equal(res.status, 405);
  t.equal(res.headers.get("allow"), "POST");
  t.equal(((await res.json()) as { code: number }).code, Code.Unimplemented);
});

t.test("a compressed Connect call passes through untouched (the edge reads only uncompressed binary bodies)", async (t) => {
  const transport = createConnectTransport({
    baseUrl: url,
    httpVersion: "1.1",
    useBinaryFormat: true,
    sendCompression: compressionGzip,
    compressMinBytes: 0,
    interceptors: [await auth.interceptorFor("admin")],
  });
  const { pipeline } = await createClient(PipelineService, transport).getPipeline({ name: "pipelines/document-default" });
  t.equal(pipeline?.name, "pipelines/document-default");
});

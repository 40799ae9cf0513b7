/**
 * Passwords, refresh tokens, access tokens and API key secrets never reach the logs, and never
 * come back in a response after the one that issued them. Every log line of the mesh, at the
 * most verbose level, is captured and searched.
 */
import t from "tap";
import { toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { GetUserResponseSchema, ListApiKeysResponseSchema, ListUsersResponseSchema, Role } from "../gen/jobmesh/v1/auth_pb.js";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import { startTestMesh } from "./support/mesh.ts";

const lines: string[] = [];
const mesh = await startTestMesh({}, { auth: true, logLevel: "trace", logDestination: { write: (line: string) => void lines.push(line) } });
t.teardown(() => mesh.close());
const auth = mesh.auth!;
const client = auth.client;
const admin = await auth.headersFor("admin");
const pipelines = createClient(PipelineService, createConnectTransport({ baseUrl: mesh.pipelines.url, httpVersion: "1.1" }));

t.test("secrets - none of them appears in any log line or in any later response", async (t) => {
  const password = "Sup3r-secret-passw0rd!";
  const secrets: string[] = [password];
  const { user } = await client.createUser({ user: { email: "carol@example.com", roles: [Role.OPERATOR] }, password }, { headers: admin });
  const session = await client.login({ email: "carol@example.com", password });
  secrets.push(session.accessToken, session.refreshToken);
  const rotated = await client.refreshToken({ refreshToken: session.refreshToken });
  secrets.push(rotated.accessToken, rotated.refreshToken);
  // Reuse of a spent refresh token is logged (as a warning): the token must not be.
  await client.refreshToken({ refreshToken: session.refreshToken }).catch(() => {});
  // Failures are logged too.
  await client.login({ email: "carol@example.com", password: password + "x" }).catch(() => {});
  await client.login({ email: "carol@example.com", password: "short" }).catch(() => {});
  const key = await client.createApiKey({ apiKey: { displayName: "logged?" } }, { headers: admin });
  secrets.push(key.secret);
  const exchanged = await client.exchangeApiKey({ secret: key.secret });
  secrets.push(exchanged.accessToken);
  await pipelines.getPipeline({ name: "pipelines/document-default" }, { headers: { "x-api-key": key.secret } });
  await pipelines.getPipeline({ name: "pipelines/document-default" }, { headers: { authorization: `Bearer ${rotated.accessToken}x` } }).catch(() => {});
  await client.revokeApiKey({ name: key.apiKey!.name }, { headers: admin });
  await pipelines.getPipeline({ name: "pipelines/document-default" }, { headers: { "x-api-key": key.secret } }).catch(() => {});

  const later = [
    toJsonString(GetUserResponseSchema, await client.getUser({ name: user!.name }, { headers: admin })),
    toJsonString(ListUsersResponseSchema, await client.listUsers({}, { headers: admin })),
    toJsonString(ListApiKeysResponseSchema, await client.listApiKeys({}, { headers: admin })),
  ].join("\n");
  t.ok(lines.length > 0, `captured ${lines.length} log lines`);
  const log = lines.join("");
  for (const secret of secrets) {
    // The signature part of a JWT, or the secret part of an opaque token, is what must not leak.
    const tail = secret.includes(".") ? secret.split(".")[2] : secret.slice(-20);
    t.notOk(log.includes(tail), `not in the logs: ${secret.slice(0, 6)}…`);
    t.notOk(later.includes(tail), `not in later responses: ${secret.slice(0, 6)}…`);
  }
  t.notOk(later.includes("$argon2id"), "no password hash in responses");
  t.notOk(log.includes("$argon2id"), "no password hash in the logs");
});

t.test("secrets - a refused login says nothing about the password it was given", async (t) => {
  const error = await client.login({ email: "carol@example.com", password: "Wrong-passw0rd-given" }).catch((e: unknown) => ConnectError.from(e));
  t.equal((error as ConnectError).code, Code.Unauthenticated);
  t.notOk((error as ConnectError).rawMessage.includes("Wrong-passw0rd-given"));
});

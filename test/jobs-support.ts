/**
 * Helpers shared by the job tests: signing in, a typed JobService client, waits on job states,
 * and reading the events stream as a JetStream consumer does.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AckPolicy, DeliverPolicy } from "@nats-io/jetstream";
import type { MsgHdrs } from "@nats-io/transport-node";
import { randomBytes } from "node:crypto";
import { type JobEvent, JobEventSchema, JobState } from "../gen/jobmesh/v1/events_pb.js";
import { type Job, JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import type { TestMesh } from "./support/mesh.ts";

export type JobClient = Client<typeof JobService>;

/** A JobService client; give it `await signInAsAdmin(mesh)` to call a mesh that enforces identity. */
export function jobClient(baseUrl: string, interceptors: Interceptor[] = []): JobClient {
  return createClient(JobService, createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors }));
}

/**
 * Interceptors that sign a transport in as the admin of the bootstrap tenant, for a mesh started
 * with `{ auth: true }`. Job tests read rows and event subjects of `mesh.infra.bootstrapTenantId`,
 * so this checks that the services see the admin in that tenant.
 */
export async function signInAsAdmin(mesh: TestMesh): Promise<Interceptor[]> {
  if (!mesh.auth) throw new Error("signInAsAdmin needs a mesh started with { auth: true }");
  const { identity } = await mesh.auth.client.getCurrentIdentity({}, { headers: await mesh.auth.headersFor("admin") });
  if (identity?.tenant !== mesh.infra.bootstrapTenantId) {
    throw new Error(`the test admin is in tenant ${identity?.tenant}, not the bootstrap tenant ${mesh.infra.bootstrapTenantId}`);
  }
  return [await mesh.auth.interceptorFor("admin")];
}

export const isTerminalState = (state: JobState) => [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED].includes(state);

/** Polls until the job is in a state `until` accepts (default: terminal). */
export async function waitForJob(client: JobClient, name: string, until: (job: Job) => boolean = (j) => isTerminalState(j.state), timeoutMs = 30_000): Promise<Job> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { job } = await client.getJob({ name });
    if (until(job!)) return job!;
    if (Date.now() > deadline) throw new Error(`job ${name} still ${JobState[job!.state]} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function codeOf(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

export { Code };

/** An event as a JetStream consumer of the events stream receives it. */
export interface StreamedEvent {
  event: JobEvent;
  subject: string;
  headers: MsgHdrs | undefined;
}

/**
 * Reads the mesh's events stream from its start with a consumer of its own (subjects matching
 * `filterSubject`), keeping the events `keep` accepts, until `enough` says so or `timeoutMs`
 * passes.
 */
export async function readEventStream(
  mesh: TestMesh,
  filterSubject: string,
  options: { keep?: (e: StreamedEvent) => boolean; enough: (kept: StreamedEvent[]) => boolean; timeoutMs?: number },
): Promise<StreamedEvent[]> {
  const { jsm, js } = mesh.infra.bus;
  const stream = `${mesh.isolated.namespace}_events`;
  const name = `reader_${randomBytes(4).toString("hex")}`;
  await jsm.consumers.add(stream, { durable_name: name, ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All, filter_subject: filterSubject });
  const consumer = await js.consumers.get(stream, name);
  const kept: StreamedEvent[] = [];
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  while (!options.enough(kept) && Date.now() < deadline) {
    for await (const msg of await consumer.fetch({ max_messages: 500, expires: 1000 })) {
      const e = { event: fromBinary(JobEventSchema, msg.data), subject: msg.subject, headers: msg.headers };
      if (options.keep?.(e) ?? true) kept.push(e);
    }
  }
  await jsm.consumers.delete(stream, name);
  return kept;
}

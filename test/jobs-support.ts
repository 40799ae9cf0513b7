/** Helpers shared by the job tests: a typed JobService client and waits on job states. */
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { JobState } from "../gen/jobmesh/v1/events_pb.js";
import { type Job, JobService } from "../gen/jobmesh/v1/jobs_pb.js";

export type JobClient = Client<typeof JobService>;

export function jobClient(baseUrl: string): JobClient {
  return createClient(JobService, createConnectTransport({ baseUrl, httpVersion: "1.1" }));
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

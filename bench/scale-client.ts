/**
 * The load side of the scale entry's read rows, imported by the load process: JobService GetJob
 * and ListJobs over Connect binary on h2c, signed in with the headers the entry passes. Kept apart
 * from `scale.ts` so the load process loads no server code.
 */
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { JobService } from "../gen/jobmesh/v1/jobs_pb.js";
import type { CallFactory } from "./harness.ts";

export type JobReadArgs =
  | { baseUrl: string; headers: Record<string, string>; call: "get"; names: string[] }
  | { baseUrl: string; headers: Record<string, string>; call: "list"; filter: string; pageToken: string };

/** GetJob of a job drawn at random from `names` per call, or one ListJobs page, again and again. */
export const jobReadCall: CallFactory<JobReadArgs> = (args) => {
  const sessionManager = new Http2SessionManager(args.baseUrl);
  const client = createClient(JobService, createConnectTransport({ baseUrl: args.baseUrl, httpVersion: "2", useBinaryFormat: true, sessionManager }));
  const { headers } = args;
  const call =
    args.call === "get"
      ? () => client.getJob({ name: args.names[Math.floor(Math.random() * args.names.length)] }, { headers })
      : () => client.listJobs({ filter: args.filter, pageToken: args.pageToken }, { headers });
  return { call, close: () => sessionManager.abort() };
};

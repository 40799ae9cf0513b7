/**
 * The load side of the auth entry: GetPipeline over gRPC (h2c) with the given headers, imported
 * by the load process. Kept apart from `auth.ts` so the load process loads no server code.
 */
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import type { CallFactory } from "./harness.ts";

export interface AuthedGetArgs {
  baseUrl: string;
  name: string;
  headers: Record<string, string>;
}

export const authedGetPipelineCall: CallFactory<AuthedGetArgs> = ({ baseUrl, name, headers }) => {
  const sessionManager = new Http2SessionManager(baseUrl);
  const client = createClient(PipelineService, createGrpcTransport({ baseUrl, sessionManager }));
  return {
    call: () => client.getPipeline({ name }, { headers }),
    close: () => sessionManager.abort(),
  };
};

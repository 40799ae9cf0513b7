/**
 * The load side of the pipelines entry, imported by the load process: a PipelineService client
 * over one of the protocols the bench compares. Kept apart from `pipelines.ts` so the load
 * process does not load the server, database and telemetry code.
 */
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import http from "node:http";
import { PipelineService } from "../gen/jobmesh/v1/pipelines_pb.js";
import type { CallFactory } from "./harness.ts";

/** The protocols of the rows, as the table labels them. */
export const protocols = {
  "connect-h2c": "Connect binary, h2c",
  "connect-http1": "Connect binary, HTTP/1.1",
  "grpc-h2c": "gRPC, h2c",
} as const;
export type Protocol = keyof typeof protocols;

export interface GetPipelineArgs {
  protocol: Protocol;
  baseUrl: string;
  name: string;
  /** Sent with every call: the credentials jobmesh needs when it enforces identity. */
  headers?: Record<string, string>;
}

/** GetPipeline by name, over a fresh connection (h2c) or keep-alive agent (HTTP/1.1) per run. */
export const getPipelineCall: CallFactory<GetPipelineArgs> = ({ protocol, baseUrl, name, headers = {} }) => {
  // Own session manager and agent, only so that close() can drop this run's connections; the
  // transports' defaults behave the same (one h2 session; a keep-alive agent, unlimited sockets).
  const sessionManager = new Http2SessionManager(baseUrl);
  const agent = new http.Agent({ keepAlive: true });
  const transport =
    protocol === "grpc-h2c"
      ? createGrpcTransport({ baseUrl, sessionManager })
      : protocol === "connect-h2c"
        ? createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, sessionManager })
        : createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: true, nodeOptions: { agent } });
  const client = createClient(PipelineService, transport);
  return {
    call: () => client.getPipeline({ name }, { headers }),
    close() {
      sessionManager.abort();
      agent.destroy();
    },
  };
};

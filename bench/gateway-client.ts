/**
 * The load side of the gateway entry, imported by the load process: GetPipeline as a REST client
 * sends it to the gateway, and as a Connect JSON client sends it straight to the service, both over
 * one undici keep-alive pool, so the only difference between the two is the gateway's hop. Kept
 * apart from `gateway.ts` so the load process loads no server code.
 */
import { Pool } from "undici";
import type { CallFactory } from "./harness.ts";

export interface HttpGetPipelineArgs {
  /** The gateway's URL (REST) or the pipelines service's (Connect). */
  baseUrl: string;
  name: string;
  /** Sent with every call: an admin's bearer token. */
  headers: Record<string, string>;
  /** Keep-alive connections in the pool: at least the concurrency, so no call waits for a socket. */
  connections: number;
}

/** `GET /v1/{name}` through the gateway: the REST route its http rule makes of GetPipeline. */
export const restGetPipelineCall: CallFactory<HttpGetPipelineArgs> = ({ baseUrl, name, headers, connections }) => {
  const pool = new Pool(baseUrl, { connections, pipelining: 1 });
  const path = `/v1/${name}`;
  return {
    async call() {
      const { statusCode, body } = await pool.request({ path, method: "GET", headers: { ...headers, accept: "application/json" } });
      return readJson(statusCode, body, path);
    },
    close: () => pool.destroy(),
  };
};

/** GetPipeline as a Connect unary call with a JSON body (what a browser's Connect client sends), straight to the service. */
export const connectJsonGetPipelineCall: CallFactory<HttpGetPipelineArgs> = ({ baseUrl, name, headers, connections }) => {
  const pool = new Pool(baseUrl, { connections, pipelining: 1 });
  const path = "/jobmesh.v1.PipelineService/GetPipeline";
  const body = JSON.stringify({ name });
  return {
    async call() {
      const response = await pool.request({
        path,
        method: "POST",
        headers: { ...headers, "content-type": "application/json", "connect-protocol-version": "1" },
        body,
      });
      return readJson(response.statusCode, response.body, path);
    },
    close: () => pool.destroy(),
  };
};

/** Parses the answer as a client would; anything but 200 counts as an error (with the body, so the table says why). */
async function readJson(statusCode: number, body: { json(): Promise<unknown>; text(): Promise<string> }, path: string): Promise<unknown> {
  if (statusCode !== 200) throw new Error(`${path}: HTTP ${statusCode} ${(await body.text()).slice(0, 200)}`);
  return body.json();
}

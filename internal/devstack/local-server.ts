/** What each local server starter hands back to the dev stack. */
export interface LocalServer {
  /** Short name for logs and DevStack.started: "postgres", "redis", "nats". */
  name: string;
  url: string;
  /** Stops the server and waits until it has exited. Safe to call twice. */
  stop(): Promise<void>;
}

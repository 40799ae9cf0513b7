/**
 * One LISTEN connection that keeps listening: a pool client that LISTENs to some channels and,
 * when it breaks (Postgres restarted, the backend terminated, a half-open TCP connection found
 * by ping), is given back to the pool as broken and replaced after a pause. Its users poll
 * while it is down; the callbacks tell them when it is lost and when it listens again.
 */
import type { PoolClient } from "pg";
import type { Logger } from "../telemetry/index.ts";
import type { Pool } from "./index.ts";

export interface ListenCallbacks {
  /** A NOTIFY on one of the channels (payload undefined when empty). */
  onNotification(channel: string, payload: string | undefined): void;
  /** The connection broke: notifications may have been missed until onListening. */
  onLost?(): void;
  /** A connection (the first or a new one) listens: changes before this were not heard. */
  onListening?(): void;
  log: Logger;
  /** Who listens, for the logs. */
  name?: string;
  /** Pause before listening again after a failure (default 1 s). */
  relistenMs?: number;
}

export interface ChannelListener {
  /** Resolves once the first attempt to listen has settled (listening or not). */
  readonly started: Promise<void>;
  isListening(): boolean;
  /**
   * One round trip on the LISTEN connection: every notification committed before it has been
   * delivered when it resolves true. False when not listening, or when no answer came within
   * timeoutMs (a half-open connection would otherwise block for the kernel's retransmission
   * timeout, ~15 min): that connection is then dropped and a new one listens.
   */
  ping(timeoutMs: number): Promise<boolean>;
  stop(): Promise<void>;
}

const channelName = /^[a-z_][a-z0-9_]*$/;

/** Listens to `channels` on a dedicated client from `db` until stopped. */
export function listenChannels(db: Pool, channels: readonly string[], callbacks: ListenCallbacks): ChannelListener {
  for (const channel of channels) {
    // Interpolated into LISTEN (it takes no parameters).
    if (!channelName.test(channel)) throw new Error(`invalid channel name ${JSON.stringify(channel)}`);
  }
  const { log } = callbacks;
  const name = callbacks.name ?? "listener";
  const relistenMs = callbacks.relistenMs ?? 1_000;
  let stopped = false;
  let listening: PoolClient | undefined;
  let relisten: NodeJS.Timeout | undefined;
  /** The latest attempt to listen: stop waits for it. */
  let attempt: Promise<void> = Promise.resolve();
  // pg emits 'error' and then also rejects the query in flight: each connection is given back
  // once, whichever comes first (pg-pool throws on a second release).
  const released = new WeakSet<PoolClient>();
  const releaseOnce = (client: PoolClient, error?: Error): boolean => {
    if (released.has(client)) return false;
    released.add(client);
    const wasListening = listening === client;
    if (wasListening) listening = undefined;
    client.release(error);
    return wasListening;
  };
  const listenAgain = () => {
    if (!stopped && !relisten) relisten = setTimeout(() => (attempt = listen()), relistenMs);
  };
  /** Drops a broken connection (once) and schedules a new one. */
  const lose = (client: PoolClient, error: Error, message: string) => {
    if (released.has(client)) return;
    log.warn({ err: error }, `${name}: ${message}; polling until it listens again`);
    const wasListening = releaseOnce(client, error);
    if (wasListening) callbacks.onLost?.();
    listenAgain();
  };

  async function listen(): Promise<void> {
    relisten = undefined;
    let client: PoolClient | undefined;
    try {
      client = await db.connect();
      const current = client;
      current.on("notification", (n) => callbacks.onNotification(n.channel, n.payload || undefined));
      current.on("error", (error: Error) => lose(current, error, "lost its LISTEN connection"));
      await current.query(channels.map((c) => `LISTEN ${c}`).join("; "));
      if (stopped) {
        releaseOnce(current);
        return;
      }
      if (released.has(current)) return;
      listening = current;
      callbacks.onListening?.();
    } catch (error) {
      log.warn({ err: error }, `${name}: cannot LISTEN; polling only`);
      if (client) releaseOnce(client, error as Error);
      listenAgain();
    }
  }
  const started = listen();
  attempt = started;

  /** Resolves "ok", "failed" or (after timeoutMs) "timeout". */
  async function answers(client: PoolClient, sql: string, timeoutMs: number) {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<"timeout">((resolve) => {
      timer = setTimeout(() => resolve("timeout"), timeoutMs);
    });
    const answered = client.query(sql).then(
      () => "ok" as const,
      () => "failed" as const,
    );
    const outcome = await Promise.race([answered, timedOut]);
    clearTimeout(timer);
    return outcome;
  }

  return {
    started,
    isListening: () => listening !== undefined,
    async ping(timeoutMs) {
      const client = listening;
      if (!client) return false;
      // Notifications are delivered before the answer to any query on their connection.
      const outcome = await answers(client, "SELECT 1", timeoutMs);
      if (outcome === "timeout") lose(client, new Error(`LISTEN connection did not answer within ${timeoutMs} ms`), "LISTEN connection unresponsive");
      return outcome === "ok" && listening === client;
    },
    async stop() {
      stopped = true;
      clearTimeout(relisten);
      relisten = undefined;
      await attempt;
      const client = listening;
      if (client) {
        // A connection that does not answer is not waited for: it is dropped as broken.
        const outcome = await answers(client, "UNLISTEN *", 2_000);
        releaseOnce(client, outcome === "ok" ? undefined : new Error("LISTEN connection did not UNLISTEN"));
      }
    },
  };
}

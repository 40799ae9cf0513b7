/**
 * JetStream publishes with their acknowledgements collected on one subscription. `js.publish`
 * makes each publish a request of its own (a reply subscription entry, a timer, a deferred and
 * two Error objects); the hot path publishes several events per stage, and that machinery was a
 * fifth of a worker's CPU. Here a publish is a plain NATS publish with a reply subject under one
 * inbox, and the PubAck (or the no-responders status) settles it. Semantics are js.publish's:
 * resolved once the stream stored the message (or recognised it as a duplicate of a
 * Nats-Msg-Id within its window), rejected on an error reply, no stream, or no reply in time.
 */
import { createInbox, type Msg, type MsgHdrs, type NatsConnection } from "@nats-io/transport-node";

export interface StreamPublisher {
  publish(subject: string, payload: Uint8Array, headers: MsgHdrs): Promise<void>;
  close(): void;
}

interface Pending {
  resolve(): void;
  reject(error: Error): void;
  sentAt: number;
}

export function createStreamPublisher(nc: NatsConnection, options: { timeoutMs?: number } = {}): StreamPublisher {
  const timeoutMs = options.timeoutMs ?? 5_000;
  const inbox = createInbox();
  const pending = new Map<string, Pending>();
  let next = 0;

  function settle(msg: Msg) {
    const token = msg.subject.slice(inbox.length + 1);
    const waiting = pending.get(token);
    if (!waiting) return;
    pending.delete(token);
    if (msg.headers?.code === 503) return waiting.reject(new Error("no stream stores this subject (no responders)"));
    let reply: { error?: { description?: string }; stream?: string };
    try {
      reply = msg.json();
    } catch {
      return waiting.reject(new Error("unreadable JetStream acknowledgement"));
    }
    if (reply.error) return waiting.reject(new Error(`JetStream refused the message: ${reply.error.description ?? "unknown error"}`));
    if (!reply.stream) return waiting.reject(new Error("invalid JetStream acknowledgement"));
    waiting.resolve();
  }

  const sub = nc.subscribe(`${inbox}.*`, { callback: (error, msg) => (error ? undefined : settle(msg)) });
  const failAll = (why: string) => {
    for (const [token, waiting] of pending) {
      pending.delete(token);
      waiting.reject(new Error(why));
    }
  };
  // One timer for all: a publish without a reply in time fails (its outbox row stays for the relay).
  const sweeper = setInterval(() => {
    const before = Date.now() - timeoutMs;
    for (const [token, waiting] of pending) {
      if (waiting.sentAt >= before) break; // insertion order is send order
      pending.delete(token);
      waiting.reject(new Error(`no JetStream acknowledgement within ${timeoutMs} ms`));
    }
  }, Math.min(1_000, timeoutMs));
  sweeper.unref();
  void sub.closed.then(() => failAll("the acknowledgement subscription closed"));

  return {
    publish(subject, payload, headers) {
      const token = (next++).toString(36);
      const settled = new Promise<void>((resolve, reject) => pending.set(token, { resolve, reject, sentAt: Date.now() }));
      try {
        nc.publish(subject, payload, { reply: `${inbox}.${token}`, headers });
      } catch (error) {
        pending.delete(token);
        return Promise.reject(error instanceof Error ? error : new Error(String(error)));
      }
      return settled;
    },
    close() {
      clearInterval(sweeper);
      sub.unsubscribe();
      failAll("the publisher closed");
    },
  };
}

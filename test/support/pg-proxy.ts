/**
 * A loopback TCP proxy to Postgres that can make its connections go silent: freeze() drops
 * every byte of the connections open at that moment, both ways, without closing them. That is
 * what a half-open TCP connection looks like to both ends (a peer lost, a NAT entry expired).
 */
import { createServer, connect, type AddressInfo, type Socket } from "node:net";

export interface PgProxy {
  /** A copy of `databaseUrl` that connects through the proxy. */
  url: string;
  /** Silences every open connection (new ones pass). */
  freeze(): void;
  /** Silences the connection whose server-side client port (pg_stat_activity.client_port) is `port`. */
  freezeClientPort(port: number): boolean;
  close(): Promise<void>;
}

export async function startPgProxy(databaseUrl: string): Promise<PgProxy> {
  const target = new URL(databaseUrl);
  const pairs = new Set<{ down: Socket; up: Socket; frozen: boolean }>();
  const server = createServer((down) => {
    const up = connect(Number(target.port || 5432), target.hostname);
    const pair = { down, up, frozen: false };
    pairs.add(pair);
    down.on("data", (data) => void (pair.frozen || up.write(data)));
    up.on("data", (data) => void (pair.frozen || down.write(data)));
    const close = () => {
      pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    for (const socket of [down, up]) socket.on("error", close).on("close", close);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = new URL(databaseUrl);
  url.port = String((server.address() as AddressInfo).port);
  return {
    url: url.href,
    freeze: () => pairs.forEach((pair) => (pair.frozen = true)),
    freezeClientPort(port) {
      const pair = [...pairs].find((p) => p.up.localPort === port);
      if (pair) pair.frozen = true;
      return pair !== undefined;
    },
    close: () =>
      new Promise<void>((resolve) => {
        pairs.forEach((pair) => (pair.down.destroy(), pair.up.destroy()));
        server.close(() => resolve());
      }),
  };
}

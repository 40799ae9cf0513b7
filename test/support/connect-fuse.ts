/**
 * A fuse below the socket layer for tests that name public addresses: once loaded, every TCP
 * connect of this process is recorded, and one to a non-loopback address is failed with EACCES
 * before the kernel sees it (and recorded as a violation the test asserts is empty). No packet
 * leaves the machine even if a bug tries to send one.
 */
import { createServer } from "node:http";
import { constants } from "node:os";

/** One TCP connect as libuv was asked to make it. */
export interface ConnectAttempt { address: string; port: number }

/** Every TCP connect of this process since the fuse was loaded. */
export const attempts: ConnectAttempt[] = [];
/** The connects to a non-loopback address, each refused with EACCES. */
export const violations: ConnectAttempt[] = [];

/** 127.0.0.0/8, ::1 and their IPv4-mapped form: what the fuse lets through. */
export const isLoopback = (a: string): boolean => a.startsWith("127.") || a === "::1" || a.startsWith("::ffff:127.");

type TcpConnect = (this: unknown, req: unknown, address: string, port: number, ...rest: unknown[]) => number;
const holder = createServer();
await new Promise<void>((resolve) => holder.listen(0, "127.0.0.1", resolve));
// libuv's TCP handle: every net/tls client connect (happy eyeballs included) ends in its connect/connect6.
const tcp = Object.getPrototypeOf((holder as unknown as { _handle: object })._handle) as Record<"connect" | "connect6", TcpConnect>;
holder.close();
for (const name of ["connect", "connect6"] as const) {
  const original = tcp[name];
  tcp[name] = function (this: unknown, req, address, port, ...rest) {
    attempts.push({ address, port });
    if (!isLoopback(address)) {
      violations.push({ address, port });
      return -constants.errno.EACCES;
    }
    return original.call(this, req, address, port, ...rest);
  };
}

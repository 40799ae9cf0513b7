/**
 * The undici dispatcher for outbound webhook requests: pooled keep-alive connections per origin,
 * each one opened only after the network policy accepted the address it is about to connect to.
 * The check runs inside connect (the guarded lookup), on the addresses the socket then uses, so a
 * DNS answer that changes between subscribing and delivering (rebinding) cannot slip through.
 * Redirects are never followed: an undici Agent returns a 3xx as the answer.
 */
import { isIP } from "node:net";
import { Agent, buildConnector, type Dispatcher } from "undici";
import {
  BlockedAddressError, createGuardedLookup, isForbiddenAddress, type ConnectLookup,
} from "./address-policy.ts";
import { addressPolicyFor, effectivePort, targetKey, type NetPolicy } from "./url-policy.ts";

/** Tuning of the guarded dispatcher. */
export interface GuardedDispatcherOptions {
  /** Resolver behind the guarded lookup (default `dns.lookup`); tests inject one. */
  lookup?: ConnectLookup;
  /** Connect (TCP + TLS) timeout (undici default 10 s). */
  connectTimeoutMs?: number;
  /** How long an idle pooled connection is kept (undici default 4 s). */
  keepAliveTimeoutMs?: number;
  /** Connections per origin (default unlimited). */
  connections?: number;
}

/**
 * An undici Agent whose every new connection is checked against `policy`: plain http unless
 * allowHttp, IP-literal hosts before any socket exists, hostnames in the lookup that feeds the
 * socket. A refusal fails the request with an error isBlockedAddressError recognises.
 */
export function createGuardedDispatcher(given: NetPolicy, options: GuardedDispatcherOptions = {}): Dispatcher {
  // A copy, frozen: a change the caller makes later must not apply to some pooled sockets and not others.
  const policy: NetPolicy = Object.freeze({ ...given, allowHosts: Object.freeze([...(given.allowHosts ?? [])]) as string[] });
  const build = (allowLoopback: boolean) => buildConnector({
    timeout: options.connectTimeoutMs,
    // The connector, not the Agent, writes the ALPN list: without this it offers h2 (see allowH2 below).
    allowH2: false,
    lookup: createGuardedLookup({ allowLoopback }, options.lookup),
  });
  // Two connectors, so loopback is opened per target (allowHosts) without rebuilding one per connection.
  const strict = build(false);
  const loopback = build(true);
  const connect: buildConnector.connector = (opts, callback) => {
    const port = effectivePort(opts.protocol, opts.port);
    const addressPolicy = addressPolicyFor(policy, opts.hostname, port);
    const refusal = refuse(policy, opts.protocol, opts.hostname, port, addressPolicy.allowLoopback === true);
    if (refusal) {
      // Asynchronously, as a socket error would be: undici then fails the requests queued for the origin.
      process.nextTick(callback, refusal, null);
      return;
    }
    // The built-in connector returns its socket, which undici uses to cancel a pending connect.
    return (addressPolicy.allowLoopback === true ? loopback : strict)(opts, callback);
  };
  return new Agent({
    connect,
    // undici 8 negotiates h2 by default, multiplexing every delivery to a receiver on one
    // connection; the issue asks for HTTP/1.1 with keep-alive per origin, which receivers expect.
    allowH2: false,
    ...(options.keepAliveTimeoutMs !== undefined ? { keepAliveTimeout: options.keepAliveTimeoutMs } : {}),
    ...(options.connections !== undefined ? { connections: options.connections } : {}),
  });
}

/** The refusal a connection gets before any socket is made, or undefined when it may proceed. */
function refuse(policy: NetPolicy, protocol: string, hostname: string, port: number, allowLoopback: boolean): BlockedAddressError | undefined {
  const target = targetKey(hostname, port);
  if (protocol !== "https:" && !(protocol === "http:" && policy.allowHttp === true)) {
    return new BlockedAddressError(target, `${protocol} to ${target} is not allowed`, `${protocol.replace(":", "")} not allowed`);
  }
  // net.connect skips `lookup` for IP literals, so the guarded lookup never sees them.
  if (isIP(hostname) !== 0 && isForbiddenAddress(hostname, { allowLoopback })) {
    return new BlockedAddressError(target, `${target} is a forbidden address`);
  }
  return undefined;
}

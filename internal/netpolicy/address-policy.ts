/**
 * Which network addresses an outbound connection (a document fetch, a webhook delivery) may
 * reach. The policy is an allowlist: only global unicast addresses pass, so any range ipaddr.js
 * knows as special (private, loopback, link-local, CGNAT, multicast, broadcast, unspecified,
 * documentation, benchmarking, reserved, Teredo, 6to4, discard…) is refused, and an IPv6 address
 * that embeds an IPv4 one (mapped, or the well-known NAT64 prefix) is judged by the IPv4 one. Any
 * other IPv6 address must be in 2000::/3 (global unicast).
 */
import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import ipaddr from "ipaddr.js";

/** Knobs of the address policy. */
export interface AddressPolicy {
  /** Let 127.0.0.0/8 and ::1 through. Tests and the local development mesh only. */
  allowLoopback?: boolean;
}

/**
 * A connection refused by the address policy. `host` is the name the caller asked for; the
 * refused address is only in `cause` (it tells an attacker what a name resolves to inside).
 */
export class BlockedAddressError extends Error {
  override readonly name = "BlockedAddressError";
  /** Recognisable on a socket error without instanceof; never UND_ERR_SOCKET, so undici fails the queued requests. */
  readonly code = "ERR_NETPOLICY_BLOCKED";
  readonly host: string;

  /** `detail` (such as the address refused) goes to `cause`: logs see it, callers do not. */
  constructor(host: string, detail: string, what = "address not allowed") {
    super(`refusing to connect to ${host}: ${what}`, { cause: new Error(detail) });
    this.host = host;
  }
}

/** Finds a BlockedAddressError in an error's `cause` chain (undici and net may wrap it). */
export function findBlockedAddressError(err: unknown): BlockedAddressError | undefined {
  for (let e = err, depth = 0; e != null && depth < 8; depth++) {
    if (e instanceof BlockedAddressError) return e;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** True when `err` (or something in its cause chain) is a refusal by the address policy. */
export function isBlockedAddressError(err: unknown): boolean {
  return findBlockedAddressError(err) !== undefined;
}

/** True when a connection must not go to `ip`; unparseable input is forbidden too. */
export function isForbiddenAddress(ip: string, policy: AddressPolicy = {}): boolean {
  const text = ip.includes(":") && ip.includes(".") ? canonicalIPv6(ip) : ip;
  if (text === undefined || !ipaddr.isValid(text)) return true;
  let addr: ipaddr.IPv4 | ipaddr.IPv6 = ipaddr.parse(text);
  if (addr.kind() === "ipv6") addr = embeddedIPv4(addr as ipaddr.IPv6) ?? addr;
  const range = addr.range();
  if (range === "loopback") return policy.allowLoopback !== true;
  if (range !== "unicast") return true;
  // ipaddr.js calls every IPv6 range it has no name for "unicast" (::7f00:1, ::a00:1, 1:2::3…);
  // only 2000::/3 is allocated as global unicast, so everything else (all of ::/8 included) is refused.
  return addr.kind() === "ipv6" && !(addr as ipaddr.IPv6).match(globalUnicast);
}

/**
 * An IPv6 literal with a dotted tail as the socket layer reads it: ipaddr.js 2.5 parses
 * "::127.0.0.1" as ::ffff:127.0.0.1 (mapped), the kernel and WHATWG URL as ::7f00:1. Undefined
 * when it is not an IPv6 literal.
 */
function canonicalIPv6(ip: string): string | undefined {
  try {
    return new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  } catch {
    return undefined;
  }
}

/** IANA's global unicast space (RFC 4291 §2.4); the special ranges inside it are refused by name. */
const globalUnicast = ipaddr.IPv6.parseCIDR("2000::/3");

/**
 * The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d) or NAT64 well-known-prefix
 * (64:ff9b::/96) address; undefined when there is none.
 * Other embeddings (6to4, Teredo, local NAT64 prefixes) are not unwrapped: they are refused.
 */
function embeddedIPv4(addr: ipaddr.IPv6): ipaddr.IPv4 | undefined {
  const range = addr.range();
  const p = addr.parts;
  const wellKnownNat64 = p[0] === 0x64 && p[1] === 0xff9b && p.slice(2, 6).every((x) => x === 0);
  if (range !== "ipv4Mapped" && !(range === "rfc6052" && wellKnownNat64)) return undefined;
  return new ipaddr.IPv4([p[6]! >> 8, p[6]! & 0xff, p[7]! >> 8, p[7]! & 0xff]);
}

/** Throws BlockedAddressError when `ip` is forbidden; the message names the host, not the address. */
export function assertAllowedAddress(host: string, ip: string, policy: AddressPolicy): void {
  if (isForbiddenAddress(ip, policy)) throw new BlockedAddressError(host, `${host} resolved to forbidden address ${ip}`);
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void;

/** Signature of `net.connect`'s `lookup` option (and of `dns.lookup`). */
export type ConnectLookup = (hostname: string, options: { all?: boolean; family?: number | string }, cb: LookupCallback) => void;

/** Resolves every address of `hostname` with `resolve` (default `dns.lookup`). */
export function lookupAll(hostname: string, resolve: ConnectLookup = dnsLookup as ConnectLookup): Promise<LookupAddress[]> {
  return new Promise((ok, fail) => {
    resolve(hostname, { all: true }, (err, addresses) => (err ? fail(err) : ok(addresses as LookupAddress[])));
  });
}

/**
 * A `lookup` for net/tls connect that resolves every address of the host, refuses the host if
 * ANY of them is forbidden (an attacker controls which one the socket would pick), and hands the
 * socket exactly the addresses it checked. Checking inside the connect path pins the address:
 * there is no second resolution a rebinding DNS server could answer differently.
 */
export function createGuardedLookup(policy: AddressPolicy, resolve: ConnectLookup = dnsLookup as ConnectLookup): ConnectLookup {
  return (hostname, options, cb) => {
    resolve(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return cb(err, []);
      const list = addresses as LookupAddress[];
      try {
        if (list.length === 0) throw new Error(`${hostname} has no addresses`);
        for (const a of list) assertAllowedAddress(hostname, a.address, policy);
      } catch (e) {
        return cb(e as NodeJS.ErrnoException, []);
      }
      if (options.all) cb(null, list);
      else cb(null, list[0]!.address, list[0]!.family);
    });
  };
}

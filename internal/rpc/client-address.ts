/**
 * The address of the client behind a call. It is the socket's peer, unless that peer is a proxy
 * listed in JOBMESH_TRUSTED_PROXIES (the gateway): then x-forwarded-for is read from its right
 * end, each hop a trusted proxy vouches for, and the first address that is not a trusted proxy
 * is the client. Whatever a client writes into x-forwarded-for itself sits left of that and is
 * never believed, so a caller cannot pick the address its limits are counted on.
 */
import { createContextKey } from "@connectrpc/connect";
import ipaddr from "ipaddr.js";

/** The client's address (IPv4 dotted, IPv6 in RFC 5952 form), for per-address limits and the audit trail. */
export const clientAddressKey = createContextKey<string | undefined>(undefined, { description: "jobmesh client address" });

export type ClientAddressResolver = (peer: string | undefined, forwardedFor: string | string[] | undefined) => string | undefined;

/** `trustedProxies` are CIDRs as internal/config normalises them ("10.0.0.0/8", "::1/128"). */
export function createClientAddressResolver(trustedProxies: readonly string[]): ClientAddressResolver {
  const ranges = trustedProxies.map((cidr) => ipaddr.parseCIDR(cidr));
  const isTrusted = (address: ipaddr.IPv4 | ipaddr.IPv6) => ranges.some(([net, bits]) => address.kind() === net.kind() && address.match(net, bits));

  return (peer, forwardedFor) => {
    if (!peer || !isAddress(peer)) return peer;
    // process() turns an IPv4-mapped IPv6 peer (::ffff:10.0.0.1, a dual-stack socket) into IPv4.
    let address = ipaddr.process(peer);
    if (ranges.length === 0 || !isTrusted(address)) return canonical(address);
    const hops = (Array.isArray(forwardedFor) ? forwardedFor.join(",") : (forwardedFor ?? "")).split(",").map((s) => s.trim()).filter(Boolean);
    for (let i = hops.length - 1; i >= 0 && isTrusted(address); i--) {
      // A malformed hop ends the chain: the last proxy we trust is the best we know.
      if (!isAddress(hops[i]!)) break;
      address = ipaddr.process(hops[i]!);
    }
    return canonical(address);
  };
}

// Strict: ipaddr.isValid would also take "10.1" or "0x7f000001", forms no proxy writes.
const isAddress = (s: string) => ipaddr.IPv4.isValidFourPartDecimal(s) || ipaddr.IPv6.isValid(s);

function canonical(address: ipaddr.IPv4 | ipaddr.IPv6): string {
  return address.kind() === "ipv6" ? (address as ipaddr.IPv6).toRFC5952String() : address.toString();
}

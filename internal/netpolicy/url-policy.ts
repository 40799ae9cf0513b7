/**
 * The network policy of webhook URLs, and what turns it into an address policy for one target.
 * A URL is checked twice: when it is subscribed (literal addresses, and what its host resolves to
 * now) and at every connection (see dispatcher.ts), because DNS may answer differently later.
 */
import { isIP } from "node:net";
import { InvalidArgumentError } from "../errors/index.ts";
import {
  isForbiddenAddress, lookupAll, type AddressPolicy, type ConnectLookup,
} from "./address-policy.ts";

/** What a service lets its outbound HTTP reach beyond public https addresses. */
export interface NetPolicy {
  /** Let loopback addresses through (the local development mesh, tests). */
  allowLoopback?: boolean;
  /** Let plain http:// through (the local development mesh, tests). */
  allowHttp?: boolean;
  /**
   * Test-only: exact "host:port" targets ("127.0.0.1:8123", "[::1]:8123", "localhost:8123") that may
   * be on a loopback address. When non-empty it REPLACES allowLoopback: loopback is open for these
   * targets and no other, whatever allowLoopback says. Private and link-local stay closed.
   */
  allowHosts?: string[];
}

/** Why a URL was refused; stable, for callers and logs. */
export type UrlPolicyReason = "invalid_url" | "scheme_not_allowed" | "userinfo_not_allowed" | "address_not_allowed" | "host_not_resolved";

/** A webhook URL the policy refuses; the message is safe to show the subscriber. */
export class UrlPolicyError extends InvalidArgumentError {
  readonly reason: UrlPolicyReason;

  constructor(reason: UrlPolicyReason, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.reason = reason;
  }
}

/** The port a URL or an undici origin connects to ("" means the scheme's default). */
export function effectivePort(protocol: string, port: string | number | undefined): number {
  if (port !== undefined && port !== "") return Number(port);
  return protocol === "https:" ? 443 : 80;
}

/** "host:port" as allowHosts spells it; `hostname` may be a bare or bracketed IPv6 literal. */
export function targetKey(hostname: string, port: number): string {
  const bare = hostname.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  return `${isIP(bare) === 6 ? `[${bare}]` : bare}:${port}`;
}

/**
 * The address policy for one target. Loopback is open for a host:port listed in allowHosts and,
 * when the list is empty, everywhere allowLoopback says so; a list narrows it to exactly its
 * entries, so a test receiver cannot open every local port.
 */
export function addressPolicyFor(policy: NetPolicy, hostname: string, port: number): AddressPolicy {
  const hosts = policy.allowHosts ?? [];
  if (hosts.length === 0) return { allowLoopback: policy.allowLoopback === true };
  const key = targetKey(hostname, port);
  return { allowLoopback: hosts.some((h) => h.trim().toLowerCase() === key) };
}

/**
 * Parses and checks a webhook URL: https only (http too when allowHttp), no userinfo, and an
 * IP-literal host must pass the address policy. A hostname is not resolved here: see
 * assertResolvesAllowed, and the dispatcher checks the address it actually connects to.
 */
export function checkWebhookUrl(raw: string, policy: NetPolicy): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch (cause) {
    throw new UrlPolicyError("invalid_url", "the webhook URL is not a valid absolute URL", { cause });
  }
  const allowed = policy.allowHttp === true ? ["https:", "http:"] : ["https:"];
  if (!allowed.includes(url.protocol)) {
    throw new UrlPolicyError("scheme_not_allowed", `webhook URL scheme ${url.protocol} is not allowed; use ${allowed.join(" or ").replaceAll(":", "")}`);
  }
  // Credentials in a URL would be stored and shown in listings; receivers authenticate by signature.
  if (url.username !== "" || url.password !== "") {
    throw new UrlPolicyError("userinfo_not_allowed", "the webhook URL must not contain a user name or password");
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  if (isIP(host) !== 0 && isForbiddenAddress(host, addressPolicyFor(policy, host, effectivePort(url.protocol, url.port)))) {
    throw new UrlPolicyError("address_not_allowed", `webhook URL host ${url.hostname} is not a public address`);
  }
  return url;
}

/**
 * The subscribe-time DNS check: every address `url`'s host resolves to now must pass the policy.
 * It catches a mistyped or internal name early; it proves nothing about later resolutions.
 */
export async function assertResolvesAllowed(url: URL, policy: NetPolicy, lookup?: ConnectLookup): Promise<void> {
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const addressPolicy = addressPolicyFor(policy, host, effectivePort(url.protocol, url.port));
  if (isIP(host) !== 0) {
    if (isForbiddenAddress(host, addressPolicy)) {
      throw new UrlPolicyError("address_not_allowed", `webhook URL host ${url.hostname} is not a public address`);
    }
    return;
  }
  let addresses;
  try {
    addresses = await lookupAll(host, lookup);
  } catch (cause) {
    throw new UrlPolicyError("host_not_resolved", `webhook URL host ${host} does not resolve`, { cause });
  }
  if (addresses.length === 0) throw new UrlPolicyError("host_not_resolved", `webhook URL host ${host} does not resolve`);
  const forbidden = addresses.find((a) => isForbiddenAddress(a.address, addressPolicy));
  if (forbidden) {
    throw new UrlPolicyError("address_not_allowed", `webhook URL host ${host} resolves to an address that is not public`, {
      cause: new Error(`${host} resolved to ${forbidden.address}`),
    });
  }
}

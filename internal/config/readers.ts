/**
 * How a setting is read and checked: each reader takes the environment, the variable's name and
 * its default, and throws ConfigError naming the variable when the value is bad. Shared by the
 * services' config and the gateway's (which Deno loads, so nothing here imports node:).
 */
import ipaddr from "ipaddr.js";

/** A setting that failed validation; its message names the variable. */
export class ConfigError extends Error {
  readonly variable: string;
  constructor(variable: string, problem: string) {
    super(`invalid configuration: ${variable} ${problem}`);
    this.name = "ConfigError";
    this.variable = variable;
  }
}

export type Env = Record<string, string | undefined>;

export function readPort(env: Env, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new ConfigError(name, `must be a port number 0..65535, got "${raw}"`);
  }
  return port;
}

export function readInt(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(name, `must be an integer ${min}..${max}, got "${raw}"`);
  }
  return value;
}

export function readUrl(env: Env, name: string, fallback: string, protocols: string[]): string {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(name, "must be a URL");
  }
  if (!protocols.includes(url.protocol)) {
    throw new ConfigError(name, `must use ${protocols.join(" or ")}, got "${url.protocol}"`);
  }
  return raw;
}

export function readPattern(env: Env, name: string, fallback: string, pattern: RegExp, what: string): string {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  if (!pattern.test(raw)) throw new ConfigError(name, `must be ${what}, got "${raw}"`);
  return raw;
}

export function readBool(env: Env, name: string): boolean {
  const raw = env[name];
  if (raw === undefined || raw === "" || raw === "false" || raw === "0") return false;
  if (raw === "true" || raw === "1") return true;
  throw new ConfigError(name, `must be true or false, got "${raw}"`);
}

/** A comma-separated list of CIDRs or single addresses, each normalised to "address/bits"; undefined when not set. */
export function readCidrList(env: Env, name: string): string[] | undefined {
  const raw = env[name];
  if (raw === undefined) return undefined;
  return raw.split(",").map((s) => s.trim()).filter(Boolean).map((entry) => {
    const cidr = entry.includes("/") ? entry : `${entry}/${ipaddr.isValid(entry) && ipaddr.parse(entry).kind() === "ipv6" ? 128 : 32}`;
    if (!ipaddr.isValidCIDR(cidr)) throw new ConfigError(name, `must be a comma-separated list of CIDRs (10.0.0.0/8, ::1/128) or addresses, got "${entry}"`);
    const [address, bits] = ipaddr.parseCIDR(cidr);
    return `${address.toString()}/${bits}`;
  });
}


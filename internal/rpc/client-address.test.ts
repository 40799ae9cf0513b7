import t from "tap";
import { loadConfig } from "../config/index.ts";
import { createClientAddressResolver } from "./client-address.ts";

const trusting = (list: string) => createClientAddressResolver(loadConfig({ JOBMESH_TRUSTED_PROXIES: list }).server.trustedProxies!);

void t.test("client address - an untrusted peer is the client, whatever its x-forwarded-for says", async (t) => {
  const resolve = trusting("10.0.0.1");
  t.equal(resolve("203.0.113.5", "198.51.100.1"), "203.0.113.5");
  t.equal(createClientAddressResolver([])("127.0.0.1", "198.51.100.1"), "127.0.0.1", "no trusted proxies: the header is never read");
});

void t.test("client address - behind trusted proxies, the nearest hop that is not one of them", async (t) => {
  const resolve = trusting("10.0.0.0/8, 127.0.0.1");
  t.equal(resolve("127.0.0.1", "198.51.100.7"), "198.51.100.7");
  t.equal(resolve("127.0.0.1", "203.0.113.9, 198.51.100.7"), "198.51.100.7", "a hop the client wrote itself is left of the one the proxy saw");
  t.equal(resolve("127.0.0.1", "198.51.100.7, 10.1.2.3"), "198.51.100.7", "through a chain of trusted proxies");
  t.equal(resolve("127.0.0.1", ["198.51.100.7", "10.1.2.3"]), "198.51.100.7", "the header repeated");
  t.equal(resolve("127.0.0.1", undefined), "127.0.0.1", "no header: the proxy itself");
  t.equal(resolve("127.0.0.1", "10.9.9.9, 10.1.2.3"), "10.9.9.9", "every hop trusted: the farthest");
  t.equal(resolve("127.0.0.1", "198.51.100.7, bogus"), "127.0.0.1", "a malformed hop ends the chain at the last trusted proxy");
  t.equal(resolve("127.0.0.1", "198.51.100.7:4711"), "127.0.0.1", "an address with a port is malformed");
  t.equal(resolve("::ffff:127.0.0.1", "198.51.100.7"), "198.51.100.7", "an IPv4-mapped peer is its IPv4 address");
  t.equal(resolve("127.0.0.1", "2001:DB8:0:0::1"), "2001:db8::1", "IPv6 in RFC 5952 form");
});

void t.test("config - JOBMESH_TRUSTED_PROXIES takes CIDRs and addresses; unset is not the same as empty", async (t) => {
  t.same(loadConfig({ JOBMESH_TRUSTED_PROXIES: "10.0.0.1, 10.1.0.0/16 ,::1" }).server.trustedProxies, ["10.0.0.1/32", "10.1.0.0/16", "::1/128"]);
  t.same(loadConfig({ JOBMESH_TRUSTED_PROXIES: "" }).server.trustedProxies, []);
  t.equal(loadConfig({}).server.trustedProxies, undefined);
  for (const bad of ["10.0.0.0/33", "gateway.local", "10.0.0.1/8/1"]) {
    t.throws(() => loadConfig({ JOBMESH_TRUSTED_PROXIES: `127.0.0.1,${bad}` }), { name: "ConfigError", variable: "JOBMESH_TRUSTED_PROXIES", message: new RegExp(`got "${bad.replaceAll(".", "\\.")}"`) }, bad);
  }
});

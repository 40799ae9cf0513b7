import t from "tap";
import { addressBucket } from "./login-limits.ts";

void t.test("login limits - an address is counted as itself (IPv4) or by its /64 (IPv6)", async (t) => {
  t.equal(addressBucket("198.51.100.7"), "198.51.100.7");
  t.equal(addressBucket("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
  t.equal(addressBucket("2001:db8:1:2::ffff"), addressBucket("2001:db8:1:2:1:2:3:4"));
  t.not(addressBucket("2001:db8:1:2::1"), addressBucket("2001:db8:1:3::1"));
  t.equal(addressBucket("::ffff:198.51.100.7"), "198.51.100.7", "an IPv4-mapped address is its IPv4 address");
});

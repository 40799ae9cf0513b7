/**
 * The network policy: which addresses outbound connections may reach (SSRF defence), shared by
 * the document fetch of the ingest stage and webhook delivery. Only global unicast addresses pass
 * unless a development setting opens loopback; every connection is checked on the address it
 * actually uses.
 */
export {
  assertAllowedAddress, BlockedAddressError, createGuardedLookup, findBlockedAddressError, isBlockedAddressError,
  isForbiddenAddress, lookupAll, type AddressPolicy, type ConnectLookup,
} from "./address-policy.ts";
export {
  addressPolicyFor, assertResolvesAllowed, checkWebhookUrl, UrlPolicyError, type NetPolicy, type UrlPolicyReason,
} from "./url-policy.ts";
export { createGuardedDispatcher, type GuardedDispatcherOptions } from "./dispatcher.ts";

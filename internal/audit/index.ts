/**
 * The audit log (issue 12): how events are carried (the topology and the sink with its spool),
 * stored and signed (the store), queried and verified (the domain, the chain), and checked
 * offline (`jobmesh audit verify`), and how an event is built (event.ts, shared by the services'
 * recorder and the gateway). Transport-free, like internal/auth: the Connect parts are imported
 * from their own files, the recorder (internal/rpc/audit.ts, the audit slot's interceptor) and
 * the service (service.ts), as internal/mesh does.
 */
export { createAuditDomain, type AuditDomain, type AuditDomainDeps, type AuditRangeQuery, type ListAuditEventsQuery } from "./domain.ts";
export {
  canonicalEventBytes,
  chainHashOf,
  checkpointSignedBytes,
  createChainVerifier,
  genesisHash,
  type ChainVerdict,
  type ChainVerifier,
  type ChainVerifierOptions,
} from "./chain.ts";
export { startAuditStore, type AuditStore, type AuditStoreDeps } from "./consumer.ts";
export { AuditEventNotFoundError, InvalidAuditFilterError } from "./errors.ts";
export { auditEventOf, capped, principalKindOf, type AuditAttribution, type CallFacts } from "./event.ts";
export { auditCommand, verifyExport, type ExportVerdict } from "./offline-verify.ts";
export { createAuditSink, type AuditSink } from "./sink.ts";
export { createAuditTopology, provisionAuditTopology, removeAuditTopology, unattributedToken, type AuditTopology } from "../bus/topology.ts";

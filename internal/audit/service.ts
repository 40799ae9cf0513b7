/**
 * AuditService handlers: read the caller's tenant, call the audit domain, shape the response.
 * Every query is scoped to the caller's tenant here, in one place, so no handler can forget it;
 * requests were validated and domain errors are mapped by the interceptors.
 */
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  AuditService,
  GetAuditEventResponseSchema,
  ListAuditCheckpointsResponseSchema,
  ListAuditEventsResponseSchema,
  VerifyAuditChainResponseSchema,
} from "../../gen/jobmesh/v1/audit_pb.js";
import { callerOf } from "../rpc/context.ts";
import type { AuditDomain } from "./domain.ts";

export { AuditService };

/** AuditService over `domain`: thin handlers, the tenant always the caller's. */
export function createAuditService(domain: AuditDomain): ServiceImpl<typeof AuditService> {
  return {
    async listAuditEvents(req, ctx) {
      const { tenantId } = callerOf(ctx.values);
      const page = await domain.list(tenantId, { pageSize: req.pageSize, pageToken: req.pageToken, filter: req.filter, orderBy: req.orderBy });
      return create(ListAuditEventsResponseSchema, { auditEvents: page.events, nextPageToken: page.nextPageToken });
    },
    async getAuditEvent(req, ctx) {
      const auditEvent = await domain.get(callerOf(ctx.values).tenantId, req.name);
      return create(GetAuditEventResponseSchema, { auditEvent });
    },
    async verifyAuditChain(req, ctx) {
      const verdict = await domain.verify(callerOf(ctx.values).tenantId, { startSequence: req.startSequence, endSequence: req.endSequence });
      return create(VerifyAuditChainResponseSchema, {
        intact: verdict.intact,
        firstBrokenSequence: verdict.firstBrokenSequence,
        reason: verdict.reason,
        verifiedCount: verdict.verifiedCount,
        lastSequence: verdict.lastSequence,
        lastHash: verdict.lastHash,
        verifyTime: timestampNow(),
        breakKind: verdict.breakKind,
        checkpointsVerified: verdict.checkpointsVerified,
        unsignedCount: verdict.unsignedCount,
      });
    },
    async *exportAuditEvents(req, ctx) {
      // The caller is read before the first item: a refused export yields nothing.
      const { tenantId } = callerOf(ctx.values);
      yield* domain.export(tenantId, { startSequence: req.startSequence, endSequence: req.endSequence, startTime: req.startTime, endTime: req.endTime });
    },
    async listAuditCheckpoints(req, ctx) {
      const page = await domain.listCheckpoints(callerOf(ctx.values).tenantId, { pageSize: req.pageSize, pageToken: req.pageToken });
      return create(ListAuditCheckpointsResponseSchema, page);
    },
  };
}

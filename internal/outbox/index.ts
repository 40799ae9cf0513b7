/**
 * The transactional outbox: messages for JetStream written in the transaction of the change that
 * causes them, and published after its commit.
 *
 * - writer.ts: writeOutbox, the one INSERT of `outbox` rows (batched, in the caller's transaction
 *   and, on the one-statement hot paths, in the caller's statement).
 * - publisher.ts: the direct publisher; a writer publishes its own rows straight after its commit
 *   and deletes them, and its rows become due for the relay only after a grace period.
 * - relay.ts: publishes whatever is due (rows of a writer that died or could not reach NATS, rows
 *   written without a direct publish, delayed rows), woken by NOTIFY with a poll behind it.
 *
 * Who runs what. Every process that writes outbox rows runs a direct publisher for its hot path:
 * the jobs process (CreateJob) and the worker (claims and commits). The relay runs in the jobs
 * process only (cmd/jobs, and the jobs server of `jobmesh up` and test meshes): the outbox is one
 * table, so that relay also publishes the rows the worker writes on its locking path (retries,
 * failures) and whatever a worker left behind when it died between its commit and its publish.
 * Relays may run side by side (rows are claimed with SKIP LOCKED), so another writer can start
 * its own with createOutboxRelay without any coordination.
 */
export { outboxChannel, writeOutbox, type KeyedOutboxMessage, type OutboxMessage, type OutboxStatement } from "./writer.ts";
export { createDirectPublisher, publishOutboxRow, type DirectPublisher, type Send } from "./publisher.ts";
export { createOutboxRelay, type OutboxRelay, type OutboxRelayOptions } from "./relay.ts";

-- Up Migration

-- Webhooks (issue 13). Three tables, two writers:
--   webhooks                   internal/webhooks/subscriptions.ts (the API) writes; the delivery
--                              engine only reads it, except state/disabled_reason/disable_time
--                              (410 Gone, days of failure) and failing_since.
--   webhook_deliveries         the fan-out inserts (ON CONFLICT (webhook_id, event_id) DO NOTHING),
--                              the dispatcher claims and moves them; the API reads them and, for
--                              replay/recover, sets status PENDING, next_attempt_time now() and
--                              replay_pending, which the dispatcher copies onto the next attempt
--                              (webhook_delivery_attempts.replay) and clears.
--   webhook_delivery_attempts  the dispatcher inserts, in the transaction that moves the delivery.
-- Every API query takes the tenant; only the dispatcher's claim crosses tenants.
-- Timestamps the API pages on are kept at millisecond precision (keyset pagination keys are
-- JavaScript dates).
-- Writers of webhooks send NOTIFY webhooks_changed with the tenant id as payload, so the
-- fan-out's per-tenant cache of subscriptions can drop that tenant.

CREATE TABLE webhooks (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  url text NOT NULL,
  -- JobEventType numbers; '{}' means every type.
  event_types integer[] NOT NULL DEFAULT '{}',
  description text NOT NULL DEFAULT '',
  -- 1 ACTIVE, 2 DISABLED (WebhookState).
  state smallint NOT NULL DEFAULT 1,
  -- WebhookDisabledReason; 0 while ACTIVE.
  disabled_reason smallint NOT NULL DEFAULT 0,
  labels jsonb NOT NULL DEFAULT '{}',
  -- "pipelines/{id}" or '' for any pipeline.
  filter_pipeline text NOT NULL DEFAULT '',
  -- Every pair must be among the job's labels; '{}' matches every job.
  filter_job_labels jsonb NOT NULL DEFAULT '{}',
  -- 0 means the default (10 in flight, 50 per second).
  max_concurrency integer NOT NULL DEFAULT 0,
  max_rate_per_second integer NOT NULL DEFAULT 0,
  -- The signing secret sealed with internal/sealing under the key-encryption key; never in clear.
  secret_sealed bytea NOT NULL,
  -- The secret before the last rotation, still signing until previous_secret_expire_time.
  previous_secret_sealed bytea,
  previous_secret_expire_time timestamptz,
  secret_rotate_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  -- The etag: bumped by every write.
  version integer NOT NULL DEFAULT 1,
  request_id uuid,
  -- The first failed attempt since the last success; NULL while healthy.
  failing_since timestamptz,
  create_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  update_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  disable_time timestamptz,
  UNIQUE (tenant_id, request_id)
);
CREATE INDEX webhooks_create_time ON webhooks (tenant_id, create_time, id);
CREATE INDEX webhooks_update_time ON webhooks (tenant_id, update_time, id);
-- The fan-out's lookup: a tenant's active subscriptions.
CREATE INDEX webhooks_active ON webhooks (tenant_id) WHERE state = 1;

CREATE TABLE webhook_deliveries (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  webhook_id uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
  -- JobEvent.event_id: the webhook-id header and the receiver's idempotency key.
  event_id text NOT NULL,
  event_type smallint NOT NULL DEFAULT 0,
  -- "jobs/{job_id}".
  job text NOT NULL DEFAULT '',
  -- The JobEvent, protobuf binary.
  event bytea NOT NULL,
  -- 1 PENDING, 2 SUCCEEDED, 3 FAILED (WebhookDeliveryStatus).
  status smallint NOT NULL DEFAULT 1,
  attempt_count integer NOT NULL DEFAULT 0,
  next_attempt_time timestamptz,
  -- Claimed by a dispatcher until then; NULL when not claimed. A crashed claim comes back.
  lease_until timestamptz,
  -- Set by ReplayWebhookDelivery / RecoverWebhookDeliveries: the next attempt is a replay.
  replay_pending boolean NOT NULL DEFAULT false,
  create_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  update_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  UNIQUE (webhook_id, event_id)
);
-- The dispatcher's claim: due pending deliveries.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_time) WHERE status = 1;
-- The claim's per-subscription LATERAL (due rows of one webhook_id, oldest first) and the disable path.
CREATE INDEX webhook_deliveries_due_by_webhook ON webhook_deliveries (webhook_id, next_attempt_time) WHERE status = 1;
-- ListWebhookDeliveries pages per subscription by create_time or update_time.
CREATE INDEX webhook_deliveries_create_time ON webhook_deliveries (tenant_id, webhook_id, create_time, id);
CREATE INDEX webhook_deliveries_update_time ON webhook_deliveries (tenant_id, webhook_id, update_time, id);

CREATE TABLE webhook_delivery_attempts (
  delivery_id uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
  attempt integer NOT NULL,
  -- WebhookAttemptOutcome.
  outcome smallint NOT NULL DEFAULT 0,
  status_code integer NOT NULL DEFAULT 0,
  latency_us bigint NOT NULL DEFAULT 0,
  -- At most 1 KiB of the answer's body.
  response_excerpt text NOT NULL DEFAULT '',
  error_message text NOT NULL DEFAULT '',
  attempt_time timestamptz NOT NULL DEFAULT now(),
  replay boolean NOT NULL DEFAULT false,
  PRIMARY KEY (delivery_id, attempt)
);

-- Down Migration
DROP TABLE webhook_delivery_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhooks;

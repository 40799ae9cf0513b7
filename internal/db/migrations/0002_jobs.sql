-- Up Migration

-- Jobs: one document through one snapshotted pipeline version. Enum columns hold the protobuf
-- enum numbers (JobState, Priority, SourceKind, Stage, StageAttemptOutcome).
CREATE TABLE jobs (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL DEFAULT gen_random_uuid(),
  pipeline_id text NOT NULL,
  pipeline_version integer NOT NULL,
  -- The PipelineConfig (protobuf JSON) as it was at creation: later versions never change a job.
  pipeline_config jsonb NOT NULL,
  priority smallint NOT NULL,
  state smallint NOT NULL,
  -- Index into pipeline_config.stages of the stage running or queued next.
  stage_index integer NOT NULL DEFAULT 0,
  -- Attempt number of that stage. Workers are fenced by (stage_index, stage_attempt): a commit
  -- that names another pair changes nothing.
  stage_attempt integer NOT NULL DEFAULT 1,
  -- The attempt this run of the stage started at (RetryJob starts a new run): retries are
  -- counted from here against the stage's max_attempts.
  stage_attempt_base integer NOT NULL DEFAULT 1,
  labels jsonb NOT NULL DEFAULT '{}',
  source_kind smallint NOT NULL,
  source_content bytea,
  source_text text,
  source_url text,
  source_upload uuid,
  media_type_hint text NOT NULL DEFAULT '',
  filename text NOT NULL DEFAULT '',
  size_bytes bigint,
  sha256 text,
  detected_media_type text,
  request_id uuid,
  request_hash text,
  error jsonb,
  trace_id text NOT NULL DEFAULT '',
  traceparent text NOT NULL DEFAULT '',
  -- Sequence of the job's last event (job_events.sequence).
  event_seq bigint NOT NULL DEFAULT 0,
  -- Bumped by every change; the etag is derived from it.
  version bigint NOT NULL DEFAULT 1,
  create_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  update_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  start_time timestamptz,
  end_time timestamptz,
  result_expire_time timestamptz,
  PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX jobs_request_id ON jobs (tenant_id, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX jobs_create_time ON jobs (tenant_id, create_time, id);
CREATE INDEX jobs_state ON jobs (tenant_id, state, create_time);

CREATE TABLE stage_attempts (
  tenant_id uuid NOT NULL,
  job_id uuid NOT NULL,
  stage_index integer NOT NULL,
  attempt integer NOT NULL,
  stage smallint NOT NULL,
  worker_id text NOT NULL,
  outcome smallint NOT NULL,
  start_time timestamptz NOT NULL DEFAULT clock_timestamp(),
  end_time timestamptz,
  error jsonb,
  PRIMARY KEY (tenant_id, job_id, stage_index, attempt),
  FOREIGN KEY (tenant_id, job_id) REFERENCES jobs (tenant_id, id) ON DELETE CASCADE
);
-- The reaper's scan: attempts still running.
CREATE INDEX stage_attempts_running ON stage_attempts (start_time) WHERE outcome = 1;

-- What each stage hands to the next: JSON, plus the document bytes for ingest.
CREATE TABLE stage_outputs (
  tenant_id uuid NOT NULL,
  job_id uuid NOT NULL,
  stage smallint NOT NULL,
  output jsonb NOT NULL,
  bytes bytea,
  PRIMARY KEY (tenant_id, job_id, stage),
  FOREIGN KEY (tenant_id, job_id) REFERENCES jobs (tenant_id, id) ON DELETE CASCADE
);

-- The result of a SUCCEEDED job: inline JSON up to 1 MiB, else a key in the results bucket.
CREATE TABLE job_results (
  tenant_id uuid NOT NULL,
  job_id uuid NOT NULL,
  media_type text NOT NULL,
  -- The result document without text and structure: what GetJobResult returns for a large one.
  summary jsonb NOT NULL,
  inline_json bytea,
  object_key text,
  size_bytes bigint NOT NULL,
  sha256 text NOT NULL,
  create_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  expire_time timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, job_id),
  FOREIGN KEY (tenant_id, job_id) REFERENCES jobs (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX job_results_expire_time ON job_results (expire_time);

-- Every event of a job, for WatchJob to replay from a sequence.
CREATE TABLE job_events (
  tenant_id uuid NOT NULL,
  job_id uuid NOT NULL,
  sequence bigint NOT NULL,
  event_type smallint NOT NULL,
  event bytea NOT NULL,
  PRIMARY KEY (tenant_id, job_id, sequence),
  FOREIGN KEY (tenant_id, job_id) REFERENCES jobs (tenant_id, id) ON DELETE CASCADE
);

-- Transactional outbox: rows written in the transaction of the change that causes them and
-- published by the relay. The id is the Nats-Msg-Id, so a republished row is de-duplicated.
CREATE TABLE outbox (
  id uuid PRIMARY KEY,
  subject text NOT NULL,
  payload bytea NOT NULL,
  headers jsonb NOT NULL DEFAULT '{}',
  create_time timestamptz NOT NULL DEFAULT clock_timestamp(),
  -- Not published before this time: how retries are delayed (backoff with jitter).
  available_time timestamptz NOT NULL DEFAULT clock_timestamp(),
  published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (available_time) WHERE published_at IS NULL;

-- Documents uploaded with UploadDocument; the bytes live in the uploads object store bucket.
CREATE TABLE uploads (
  tenant_id uuid NOT NULL REFERENCES tenants (id),
  id uuid NOT NULL,
  filename text NOT NULL DEFAULT '',
  media_type text NOT NULL DEFAULT '',
  size_bytes bigint NOT NULL,
  sha256 text NOT NULL,
  create_time timestamptz NOT NULL DEFAULT date_trunc('milliseconds', now()),
  expire_time timestamptz NOT NULL,
  PRIMARY KEY (tenant_id, id)
);

-- Down Migration
DROP TABLE uploads;
DROP TABLE outbox;
DROP TABLE job_events;
DROP TABLE job_results;
DROP TABLE stage_outputs;
DROP TABLE stage_attempts;
DROP TABLE jobs;

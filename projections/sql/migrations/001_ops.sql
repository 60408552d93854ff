-- Monitoring tables of schema ops: the event log, dead letters, batch jobs, consumer positions
-- and per-minute statistics.
CREATE SCHEMA IF NOT EXISTS ops;

CREATE TABLE ops.event_log (
    event_id     text PRIMARY KEY,
    type         text NOT NULL,
    family       text NOT NULL,
    object_id    text NOT NULL,
    account      text,
    livemode     boolean NOT NULL,
    created      timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    processed_at timestamptz,
    status       text NOT NULL
        CHECK (status IN ('processed', 'stale', 'unhandled', 'dead_lettered')),
    deliveries   integer NOT NULL DEFAULT 1 CHECK (deliveries >= 1),
    attempts     integer NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    source       text NOT NULL
        CHECK (source IN ('webhook', 'backfill', 'replay', 'dlq_retry')),
    topic        text NOT NULL,
    "partition"  integer NOT NULL,
    "offset"     bigint NOT NULL
);
-- The audit trail looks events up by object; the performance view scans recent events by type.
CREATE INDEX event_log_object_idx ON ops.event_log (object_id, created);
CREATE INDEX event_log_type_processed_idx ON ops.event_log (type, processed_at);
CREATE INDEX event_log_processed_idx ON ops.event_log (processed_at);
CREATE INDEX event_log_status_idx ON ops.event_log (status) WHERE status <> 'processed';

CREATE TABLE ops.dead_letters (
    id               bigserial PRIMARY KEY,
    event_id         text NOT NULL,
    type             text NOT NULL,
    family           text NOT NULL,
    handler          text NOT NULL,
    error_type       text NOT NULL,
    error_message    text NOT NULL,
    attempts         integer NOT NULL CHECK (attempts >= 1),
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    status           text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'retried', 'resolved')),
    note             text,
    source_topic     text NOT NULL,
    source_partition integer NOT NULL,
    source_offset    bigint NOT NULL,
    payload          jsonb NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- One dead letter per consumed message, even when a crash makes the worker fail it twice.
    UNIQUE (source_topic, source_partition, source_offset)
);
CREATE INDEX dead_letters_open_idx ON ops.dead_letters (last_failed_at) WHERE status = 'open';
CREATE INDEX dead_letters_event_idx ON ops.dead_letters (event_id);
CREATE INDEX dead_letters_type_idx ON ops.dead_letters (type, status);

CREATE TABLE ops.batch_jobs (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('replay', 'rebuild', 'dlq_retry', 'backfill')),
    params      jsonb NOT NULL DEFAULT '{}'::jsonb,
    total       bigint,
    processed   bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,
    status      text NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled')),
    error       text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX batch_jobs_recent_idx ON ops.batch_jobs (started_at DESC);

CREATE TABLE ops.projection_offsets (
    projection  text NOT NULL,
    topic       text NOT NULL,
    "partition" integer NOT NULL,
    "offset"    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, "partition")
);

CREATE TABLE ops.event_stats (
    minute       timestamptz NOT NULL,
    family       text NOT NULL,
    type         text NOT NULL,
    status       text NOT NULL,
    events       bigint NOT NULL DEFAULT 0,
    lag_ms_total double precision NOT NULL DEFAULT 0,
    lag_ms_max   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, family, type, status)
);
CREATE INDEX event_stats_type_idx ON ops.event_stats (type, minute);

-- What the monitoring API reads: where each event entered and was logged, every stage it went
-- through after (ops.event_trail), a latency histogram per minute (ops.event_stats.lag_buckets)
-- and each endpoint's newest event. The event log and the trail grow with every event, so both
-- are partitioned by month: old months are dropped whole, and new ones are created ahead by
-- 'stripe-streams migrate' and the workers (projections/partitions.py).

-- Partitioned by the event's own created time, the one key every copy of an event carries, so a
-- redelivery finds its row: the primary key must hold the partition key.
CREATE TABLE ops.event_log_partitioned (
    event_id      text NOT NULL,
    type          text NOT NULL,
    family        text NOT NULL,
    object_id     text NOT NULL,
    account       text,
    livemode      boolean NOT NULL,
    created       timestamptz NOT NULL,
    received_at   timestamptz NOT NULL,
    processed_at  timestamptz,
    status        text NOT NULL
        CHECK (status IN ('processed', 'stale', 'unhandled', 'dead_lettered')),
    deliveries    integer NOT NULL DEFAULT 1 CHECK (deliveries >= 1),
    attempts      integer NOT NULL DEFAULT 1 CHECK (attempts >= 1),
    source        text NOT NULL
        CHECK (source IN ('webhook', 'backfill', 'replay', 'dlq_retry', 'reconcile')),
    topic         text NOT NULL,
    "partition"   integer NOT NULL,
    "offset"      bigint NOT NULL,
    endpoint      text,
    log_partition integer,
    log_offset    bigint,
    PRIMARY KEY (event_id, created)
) PARTITION BY RANGE (created);
CREATE TABLE ops.event_log_default PARTITION OF ops.event_log_partitioned DEFAULT;

-- One partition per month the existing rows cover, named like the ones created later.
DO $$
DECLARE
    month timestamptz;
BEGIN
    FOR month IN
        SELECT DISTINCT date_trunc('month', created AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        FROM ops.event_log
    LOOP
        EXECUTE format(
            'CREATE TABLE ops.%I PARTITION OF ops.event_log_partitioned FOR VALUES FROM (%L) TO (%L)',
            'event_log_' || to_char(month AT TIME ZONE 'UTC', 'YYYY_MM'),
            month, (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC'
        );
    END LOOP;
END
$$;

INSERT INTO ops.event_log_partitioned (
    event_id, type, family, object_id, account, livemode, created, received_at, processed_at,
    status, deliveries, attempts, source, topic, "partition", "offset"
)
SELECT event_id, type, family, object_id, account, livemode, created, received_at, processed_at,
       status, deliveries, attempts, source, topic, "partition", "offset"
FROM ops.event_log;

DROP TABLE ops.event_log;
ALTER TABLE ops.event_log_partitioned RENAME TO event_log;
ALTER TABLE ops.event_log RENAME CONSTRAINT event_log_partitioned_pkey TO event_log_pkey;
ALTER TABLE ops.event_log RENAME CONSTRAINT event_log_partitioned_status_check
    TO event_log_status_check;
ALTER TABLE ops.event_log RENAME CONSTRAINT event_log_partitioned_source_check
    TO event_log_source_check;
ALTER TABLE ops.event_log RENAME CONSTRAINT event_log_partitioned_deliveries_check
    TO event_log_deliveries_check;
ALTER TABLE ops.event_log RENAME CONSTRAINT event_log_partitioned_attempts_check
    TO event_log_attempts_check;
-- The audit trail looks events up by id and by object; the overview finds the oldest event
-- still dead-lettered.
CREATE INDEX event_log_object_idx ON ops.event_log (object_id, created);
CREATE INDEX event_log_status_idx ON ops.event_log (status, received_at)
    WHERE status <> 'processed';

-- Every stage of an event after its first delivery reached a family agent, one row each, written
-- in the transaction that did it.
CREATE TABLE ops.event_trail (
    event_id    text NOT NULL,
    at          timestamptz NOT NULL,
    stage       text NOT NULL CHECK (stage IN (
        'applied', 'stale', 'unhandled', 'duplicate', 'dead_lettered', 'retried', 'replayed',
        'resolved'
    )),
    source      text,
    topic       text,
    "partition" integer,
    "offset"    bigint,
    deliveries  integer NOT NULL DEFAULT 1,
    detail      text
) PARTITION BY RANGE (at);
CREATE TABLE ops.event_trail_default PARTITION OF ops.event_trail DEFAULT;
CREATE INDEX event_trail_event_idx ON ops.event_trail (event_id, at);

-- Counts per latency bucket (bounds in projections/latency.py), for percentiles over any window.
ALTER TABLE ops.event_stats ADD COLUMN lag_buckets bigint[] NOT NULL DEFAULT '{}';

CREATE TABLE ops.endpoint_activity (
    endpoint         text NOT NULL,
    family           text NOT NULL,
    last_received_at timestamptz NOT NULL,
    PRIMARY KEY (endpoint, family)
);

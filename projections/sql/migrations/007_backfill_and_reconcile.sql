-- Events reach the log from reconcile too; reconcile runs as a batch job. A backfill remembers
-- the events it appended, so running it again appends none of them before the workers have
-- logged them. Ties: objects two of whose events were created in the same second, whose order
-- no rule can tell, recorded as the workers apply them for 'reconcile --ties' to fetch again.
ALTER TABLE ops.event_log DROP CONSTRAINT event_log_source_check;
ALTER TABLE ops.event_log ADD CONSTRAINT event_log_source_check
    CHECK (source IN ('webhook', 'backfill', 'replay', 'dlq_retry', 'reconcile'));
ALTER TABLE ops.batch_jobs DROP CONSTRAINT batch_jobs_kind_check;
ALTER TABLE ops.batch_jobs ADD CONSTRAINT batch_jobs_kind_check
    CHECK (kind IN ('replay', 'rebuild', 'dlq_retry', 'backfill', 'reconcile'));

CREATE TABLE ops.backfilled_events (
    event_id    text PRIMARY KEY,
    job_id      bigint NOT NULL,
    appended_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ops.ties (
    "table"     text NOT NULL,
    object_id   text NOT NULL,
    event_ids   text[] NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ("table", object_id)
);

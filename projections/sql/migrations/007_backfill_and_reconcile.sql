-- Events reach the log from reconcile too; reconcile runs as a batch job. A backfill remembers
-- the events it appends (pending while their produce is under way), so running it again, or
-- resuming it after a crash, appends none of them twice. Ties: objects two of whose events were created in the same second, whose order
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
    sent_at     timestamptz NOT NULL DEFAULT now(),
    appended    boolean NOT NULL DEFAULT false
);
CREATE INDEX backfilled_events_pending_idx ON ops.backfilled_events (job_id) WHERE NOT appended;

CREATE TABLE ops.ties (
    "table"     text NOT NULL,
    object_id   text NOT NULL,
    event_ids   text[] NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY ("table", object_id)
);

-- Named queries of projections/jobs.py: the rows of ops.batch_jobs.

-- name: start_job
INSERT INTO ops.batch_jobs (kind, params, total, position)
VALUES (%(kind)s, %(params)s, %(total)s, %(position)s)
RETURNING id

-- name: resume_job
-- A running job whose process died is resumed as well as a cancelled or failed one.
UPDATE ops.batch_jobs
SET status = 'running', error = NULL, finished_at = NULL, updated_at = now()
WHERE id = %(id)s AND kind = %(kind)s AND status <> 'succeeded'
RETURNING params, total, processed, failed, position

-- name: job_status
SELECT kind, status FROM ops.batch_jobs WHERE id = %(id)s

-- name: record_progress
UPDATE ops.batch_jobs
SET total = %(total)s, processed = %(processed)s, failed = %(failed)s, position = %(position)s,
    updated_at = now()
WHERE id = %(id)s

-- name: finish_job
UPDATE ops.batch_jobs
SET total = %(total)s, processed = %(processed)s, failed = %(failed)s, position = %(position)s,
    status = %(status)s, error = %(error)s, updated_at = now(), finished_at = now()
WHERE id = %(id)s

-- name: logged_statuses
SELECT event_id, status FROM ops.event_log WHERE event_id = ANY(%(event_ids)s::text[])

-- name: known_events
-- Events the pipeline holds already: logged by a worker, or appended by a backfill.
SELECT event_id FROM ops.event_log WHERE event_id = ANY(%(event_ids)s::text[])
UNION
SELECT event_id FROM ops.backfilled_events WHERE event_id = ANY(%(event_ids)s::text[])

-- name: sending_backfilled
-- Marks events as sent before their produce starts: a resumed job looks for them in the log.
INSERT INTO ops.backfilled_events (event_id, job_id)
SELECT unnest(%(event_ids)s::text[]), %(job)s
ON CONFLICT (event_id) DO NOTHING

-- name: appended_backfilled
UPDATE ops.backfilled_events SET appended = true WHERE event_id = ANY(%(event_ids)s::text[])

-- name: unsettled_backfilled
SELECT event_id, sent_at FROM ops.backfilled_events WHERE job_id = %(job)s AND NOT appended

-- name: forget_backfilled
DELETE FROM ops.backfilled_events WHERE event_id = ANY(%(event_ids)s::text[])

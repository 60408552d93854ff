-- Named queries of projections/monitor/: read-only, each answered from indexes or from the
-- per-minute tables, never from a scan of the event log.

-- name: outcomes
-- Events the workers finished per outcome in each window, counted by the minute they finished.
SELECT w.name, s.status, sum(s.events)::bigint
FROM unnest(%(names)s::text[], %(seconds)s::int[]) AS w(name, seconds)
JOIN ops.event_stats AS s
  ON s.minute >= date_trunc('minute', now() - make_interval(secs => w.seconds))
GROUP BY w.name, s.status

-- name: open_dead_letters
SELECT count(*), min(first_failed_at) FROM ops.dead_letters WHERE status = 'open'

-- name: endpoints
SELECT endpoint, max(last_received_at) FROM ops.endpoint_activity GROUP BY endpoint
ORDER BY endpoint

-- name: running_jobs
SELECT id, kind, status, total, processed, failed, started_at, updated_at
FROM ops.batch_jobs WHERE status = 'running' ORDER BY id

-- name: positions
SELECT topic, "partition", "offset" FROM ops.projection_offsets
WHERE projection = ANY(%(projections)s::text[])

-- name: latency
-- Events, errors and latency buckets per hour, family and type of a time range, in one pass
-- over its rows; rows of minutes that ended never change. {bucket_sums} is one sum per
-- bucket: sum(lag_buckets[1]), sum(lag_buckets[2]), ...
SELECT date_trunc('hour', minute), family, type, sum(events)::bigint,
       (sum(events) FILTER (WHERE status = 'dead_lettered'))::bigint,
       ARRAY[{bucket_sums}]::bigint[]
FROM ops.event_stats
WHERE minute >= %(since)s AND minute < %(until)s
GROUP BY 1, family, type

-- name: dead_letters
SELECT id, event_id, type, family, handler, error_type, error_message, attempts,
       first_failed_at, last_failed_at, status, note, source_topic, source_partition,
       source_offset, endpoint, received_at,
       CASE WHEN %(payload)s THEN payload END AS payload
FROM ops.dead_letters
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(type)s::text IS NULL OR type = %(type)s)
  AND (%(family)s::text IS NULL OR family = %(family)s)
  AND (%(since)s::timestamptz IS NULL OR last_failed_at >= %(since)s)
  AND id > %(after)s
ORDER BY id
LIMIT %(limit)s

-- name: events_by_id
SELECT event_id, type, family, object_id, account, livemode, created, received_at,
       processed_at, status, deliveries, attempts, source, topic, "partition", "offset",
       endpoint, log_partition, log_offset
FROM ops.event_log WHERE event_id = %(event_id)s

-- name: events_by_object
-- An object's events oldest first, a page after (created, event id).
SELECT event_id, type, family, object_id, account, livemode, created, received_at,
       processed_at, status, deliveries, attempts, source, topic, "partition", "offset",
       endpoint, log_partition, log_offset
FROM ops.event_log
WHERE object_id = %(object_id)s
  AND (created, event_id) > (coalesce(%(after_created)s::timestamptz, '-infinity'),
                             coalesce(%(after_id)s::text, ''))
ORDER BY created, event_id
LIMIT %(limit)s

-- name: trail
SELECT event_id, at, stage, source, topic, "partition", "offset", deliveries, detail
FROM ops.event_trail WHERE event_id = ANY(%(event_ids)s::text[])
ORDER BY event_id, at

-- name: dead_letter_payloads
SELECT DISTINCT ON (event_id) event_id, payload FROM ops.dead_letters
WHERE event_id = ANY(%(event_ids)s::text[])
ORDER BY event_id, id DESC

-- name: batch_jobs
SELECT id, kind, status, params, total, processed, failed, error, started_at, updated_at,
       finished_at
FROM ops.batch_jobs
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(kind)s::text IS NULL OR kind = %(kind)s)
  AND (%(before)s::bigint IS NULL OR id < %(before)s)
ORDER BY id DESC
LIMIT %(limit)s

-- name: dead_letters_growth
-- Dead letters first failing in the last window, and when the first of them failed.
SELECT count(*), min(first_failed_at) FROM ops.dead_letters
WHERE first_failed_at >= now() - make_interval(secs => %(seconds)s)

-- name: slow_minutes
-- Per minute of the window, the events and latency buckets of all families, newest first.
WITH window_rows AS (
    SELECT minute, events, lag_buckets FROM ops.event_stats
    WHERE minute >= now() - make_interval(secs => %(seconds)s)
), totals AS (
    SELECT minute, sum(events)::bigint AS events FROM window_rows GROUP BY minute
), buckets AS (
    SELECT w.minute, b.i, sum(b.n)::bigint AS n
    FROM window_rows AS w, unnest(w.lag_buckets) WITH ORDINALITY AS b(n, i)
    GROUP BY w.minute, b.i
), histograms AS (
    SELECT minute, array_agg(n ORDER BY i) AS counts FROM buckets GROUP BY minute
)
SELECT t.minute, t.events, coalesce(h.counts, '{}')
FROM totals AS t LEFT JOIN histograms AS h USING (minute)
ORDER BY t.minute DESC

-- name: paused_families
SELECT family, paused_at, resume_at, reason FROM ops.family_pauses ORDER BY family

-- name: newest_position
SELECT max(updated_at) FROM ops.projection_offsets
WHERE projection = ANY(%(projections)s::text[])

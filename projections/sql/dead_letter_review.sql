-- Named queries of projections/dead_letter_review.py: reading, resolving and retrying dead
-- letters. Filters left NULL select everything.

-- name: list_dead_letters
SELECT id, event_id, type, family, handler, error_type, error_message, attempts,
       first_failed_at, last_failed_at, status, note
FROM ops.dead_letters
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(type)s::text IS NULL OR type = %(type)s)
  AND (%(family)s::text IS NULL OR family = %(family)s)
  AND (%(since)s::timestamptz IS NULL OR last_failed_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR last_failed_at < %(until)s)
  AND id > %(after)s
ORDER BY id
LIMIT %(limit)s

-- name: show_dead_letter
SELECT id, event_id, type, family, handler, error_type, error_message, attempts,
       first_failed_at, last_failed_at, status, note, source_topic, source_partition,
       source_offset, endpoint, received_at, updated_at, payload
FROM ops.dead_letters
WHERE id = %(id)s

-- name: resolve_dead_letter
-- The event's audit trail keeps the operator's note.
WITH resolved AS (
    UPDATE ops.dead_letters SET status = 'resolved', note = %(note)s, updated_at = now()
    WHERE id = %(id)s AND status <> 'resolved'
    RETURNING id, event_id, source_topic, source_partition, source_offset
), trail AS (
    INSERT INTO ops.event_trail (event_id, at, stage, topic, "partition", "offset", detail)
    SELECT event_id, clock_timestamp(), 'resolved', source_topic, source_partition,
           source_offset, %(note)s
    FROM resolved
)
SELECT id FROM resolved

-- name: retry_selection
-- The open dead letters a retry takes: the ids given, those of one type, or all.
SELECT id
FROM ops.dead_letters
WHERE status = 'open'
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s))
  AND (%(type)s::text IS NULL OR type = %(type)s)
ORDER BY id

-- name: retry_items
-- The payload as text: a payload jsonb could not hold is kept whole under unparsed_payload.
SELECT id, event_id, type,
       coalesce(payload ->> 'unparsed_payload', payload::text), endpoint, received_at
FROM ops.dead_letters
WHERE id = ANY(%(ids)s)
ORDER BY id

-- name: retry_outcomes
-- Where each retried dead letter stands: retried (applied), failed again since the retry was
-- published, or still waiting for a worker.
SELECT id,
       CASE WHEN status = 'retried' THEN 'retried'
            WHEN status = 'resolved' THEN 'resolved'
            WHEN last_failed_at >= %(published)s THEN 'failed again'
            ELSE 'pending' END,
       error_type || ': ' || error_message
FROM ops.dead_letters
WHERE id = ANY(%(ids)s)

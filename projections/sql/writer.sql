-- Named queries of projections/writer.py. Queries with {placeholders} are templates whose
-- identifiers (table, staging table, columns) are filled in with psycopg.sql, never by hand.

-- name: share_mirrors
SELECT pg_advisory_xact_lock_shared(%(lock)s)

-- name: lock_positions
-- Creates missing positions at -1 and locks every position of the batch (in a fixed order, so
-- two workers briefly sharing a partition during a rebalance queue up instead of deadlocking).
INSERT INTO ops.projection_offsets AS p (projection, topic, "partition", "offset")
SELECT %(projection)s, t.topic, t.part, -1
FROM unnest(%(topics)s::text[], %(partitions)s::int[]) AS t(topic, part)
ORDER BY t.topic, t.part
ON CONFLICT (projection, topic, "partition") DO UPDATE SET "offset" = p."offset"
RETURNING p.topic, p."partition", p."offset"

-- name: advance_positions
UPDATE ops.projection_offsets AS p
SET "offset" = greatest(p."offset", t.off), updated_at = now()
FROM unnest(%(topics)s::text[], %(partitions)s::int[], %(offsets)s::bigint[]) AS t(topic, part, off)
WHERE p.projection = %(projection)s AND p.topic = t.topic AND p."partition" = t.part

-- name: logged_events
-- By id and created, the event log's partition key, so each lookup reads one month.
SELECT l.event_id, l.status, l.log_partition, coalesce(l.last_log_offset, l.log_offset)
FROM unnest(%(event_ids)s::text[], %(created)s::bigint[]) AS k(event_id, created)
JOIN ops.event_log AS l ON l.event_id = k.event_id AND l.created = to_timestamp(k.created)

-- name: record_events
-- A known event id only counts another delivery, unless it was dead-lettered: then this
-- delivery was another attempt, and its outcome replaces the dead letter's. processed_at is
-- the clock at the end of the batch's writes, not the start of its transaction. Copies of log
-- positions counted before never reach this statement (the batch plan skips them).
INSERT INTO ops.event_log AS l (
    event_id, type, family, object_id, account, livemode, created, received_at, processed_at,
    status, deliveries, attempts, source, topic, "partition", "offset", endpoint, log_partition,
    log_offset, last_log_offset
)
SELECT e.event_id, e.type, %(family)s, e.object_id, e.account, e.livemode,
       to_timestamp(e.created), e.received_at, clock_timestamp(), e.status, e.deliveries,
       %(attempts)s, e.source, e.topic, e."partition", e."offset", e.endpoint, e.log_partition,
       e.log_offset, e.last_log_offset
FROM json_to_recordset(%(events)s::json) AS e(
    event_id text, type text, object_id text, account text, livemode boolean, created bigint,
    received_at timestamptz, status text, deliveries int, source text, topic text,
    "partition" int, "offset" bigint, endpoint text, log_partition int, log_offset bigint,
    last_log_offset bigint
)
ORDER BY e.event_id
ON CONFLICT (event_id, created) DO UPDATE SET
    deliveries = l.deliveries + excluded.deliveries,
    last_log_offset = CASE WHEN excluded.log_partition = l.log_partition
                           THEN greatest(l.last_log_offset, l.log_offset, excluded.last_log_offset)
                           ELSE l.last_log_offset END,
    status = CASE WHEN l.status = 'dead_lettered' THEN excluded.status ELSE l.status END,
    attempts = CASE WHEN l.status = 'dead_lettered' THEN excluded.attempts ELSE l.attempts END,
    processed_at = CASE WHEN l.status = 'dead_lettered' THEN excluded.processed_at
                        ELSE l.processed_at END,
    source = CASE WHEN l.status = 'dead_lettered' THEN excluded.source ELSE l.source END,
    topic = CASE WHEN l.status = 'dead_lettered' THEN excluded.topic ELSE l.topic END,
    "partition" = CASE WHEN l.status = 'dead_lettered' THEN excluded."partition"
                       ELSE l."partition" END,
    "offset" = CASE WHEN l.status = 'dead_lettered' THEN excluded."offset" ELSE l."offset" END

-- name: record_replayed
-- Re-applied events get source replay (and leave dead_lettered, if that was their status);
-- deliveries stay as they were, and so does when they were first processed: the trail
-- records the replay. An event new to the log counts the position replay read as delivered,
-- so the live worker's copy of it counts nothing more.
INSERT INTO ops.event_log AS l (
    event_id, type, family, object_id, account, livemode, created, received_at, processed_at,
    status, deliveries, attempts, source, topic, "partition", "offset", endpoint, log_partition,
    log_offset, last_log_offset
)
SELECT e.event_id, e.type, %(family)s, e.object_id, e.account, e.livemode,
       to_timestamp(e.created), e.received_at, clock_timestamp(), e.status, 1, 1, 'replay',
       e.topic, e."partition", e."offset", e.endpoint, e.log_partition, e.log_offset,
       e.log_offset
FROM json_to_recordset(%(events)s::json) AS e(
    event_id text, type text, object_id text, account text, livemode boolean, created bigint,
    received_at timestamptz, status text, topic text, "partition" int, "offset" bigint,
    endpoint text, log_partition int, log_offset bigint
)
ORDER BY e.event_id
ON CONFLICT (event_id, created) DO UPDATE SET
    source = CASE WHEN excluded.status = 'processed' THEN 'replay' ELSE l.source END,
    processed_at = CASE WHEN l.status = 'dead_lettered' THEN excluded.processed_at
                        ELSE l.processed_at END,
    status = CASE WHEN l.status = 'dead_lettered' THEN excluded.status ELSE l.status END

-- name: record_ties
INSERT INTO ops.ties AS t ("table", object_id, event_ids)
SELECT e."table", e.object_id, e.event_ids
FROM json_to_recordset(%(ties)s::json) AS e("table" text, object_id text, event_ids text[])
ORDER BY e."table", e.object_id
ON CONFLICT ("table", object_id) DO UPDATE SET
    event_ids = ARRAY(SELECT DISTINCT unnest(t.event_ids || excluded.event_ids) ORDER BY 1),
    detected_at = now()

-- name: close_revived_dead_letters
UPDATE ops.dead_letters SET status = 'retried', updated_at = now()
WHERE event_id = ANY(%(event_ids)s::text[]) AND status = 'open'

-- name: count_stats
-- Per type and status: events, latency total and maximum, and counts per latency bucket
-- (width_bucket over the bounds numbers them 1..n, the last one open-ended).
WITH lags AS (
    SELECT u.type, u.status,
           greatest(0, extract(epoch FROM clock_timestamp() - u.received_at) * 1000) AS lag_ms
    FROM json_to_recordset(%(events)s::json) AS u(type text, status text, received_at timestamptz)
), grouped AS (
    SELECT type, status, count(*) AS events, sum(lag_ms) AS total, max(lag_ms) AS slowest,
           array_agg(width_bucket(lag_ms, %(bounds)s::float8[])) AS buckets
    FROM lags
    GROUP BY type, status
)
INSERT INTO ops.event_stats AS s (
    minute, family, type, status, events, lag_ms_total, lag_ms_max, lag_buckets
)
SELECT date_trunc('minute', now()), %(family)s, g.type, g.status, g.events, g.total, g.slowest,
       h.counts
FROM grouped AS g
CROSS JOIN LATERAL (
    SELECT array_agg(coalesce(c.n, 0) ORDER BY i.i) AS counts
    FROM generate_series(1, cardinality(%(bounds)s::float8[])) AS i(i)
    LEFT JOIN (SELECT b, count(*) AS n FROM unnest(g.buckets) AS b GROUP BY b) AS c ON c.b = i.i
) AS h
ORDER BY g.type, g.status
ON CONFLICT (minute, family, type, status) DO UPDATE SET
    events = s.events + excluded.events,
    lag_ms_total = s.lag_ms_total + excluded.lag_ms_total,
    lag_ms_max = greatest(s.lag_ms_max, excluded.lag_ms_max),
    lag_buckets = ARRAY(
        SELECT coalesce(a, 0) + coalesce(b, 0)
        FROM unnest(s.lag_buckets, excluded.lag_buckets) WITH ORDINALITY AS u(a, b, i)
        ORDER BY u.i
    )

-- name: record_trail
INSERT INTO ops.event_trail (
    event_id, at, stage, source, topic, "partition", "offset", deliveries, detail
)
SELECT t.event_id, clock_timestamp(), t.stage, t.source, t.topic, t."partition", t."offset",
       t.deliveries, t.detail
FROM json_to_recordset(%(trail)s::json) AS t(
    event_id text, stage text, source text, topic text, "partition" int, "offset" bigint,
    deliveries int, detail text
)

-- name: record_endpoints
INSERT INTO ops.endpoint_activity AS a (endpoint, family, last_received_at)
SELECT e.endpoint, %(family)s, e.received_at
FROM json_to_recordset(%(endpoints)s::json) AS e(endpoint text, received_at timestamptz)
ORDER BY e.endpoint
ON CONFLICT (endpoint, family) DO UPDATE SET
    last_received_at = greatest(a.last_received_at, excluded.last_received_at)

-- name: record_dead_letter
-- One row per failing event: an event that fails again (a retry, a replay, another copy of
-- it) updates its open or retried dead letter, adding its attempts and keeping its first
-- coordinates. Either way the row holds the dead-letter message still to produce.
WITH again AS (
    UPDATE ops.dead_letters AS d SET
        attempts = d.attempts + %(attempts)s,
        handler = %(handler)s,
        error_type = %(error_type)s,
        error_message = %(error_message)s,
        last_failed_at = %(last_failed_at)s,
        status = 'open',
        message = %(message)s,
        publishing_at = NULL,
        published = false,
        updated_at = now()
    WHERE d.id = (
        SELECT id FROM ops.dead_letters
        WHERE event_id = %(event_id)s AND status <> 'resolved'
          AND (source_topic, source_partition, source_offset)
              <> (%(source_topic)s, %(source_partition)s, %(source_offset)s)
        ORDER BY id DESC LIMIT 1
    )
    RETURNING d.id
), first AS (
    INSERT INTO ops.dead_letters (
        event_id, type, family, handler, error_type, error_message, attempts, first_failed_at,
        last_failed_at, source_topic, source_partition, source_offset, payload, endpoint,
        received_at, message, published
    )
    SELECT %(event_id)s, %(type)s, %(family)s, %(handler)s, %(error_type)s, %(error_message)s,
           %(attempts)s, %(first_failed_at)s, %(last_failed_at)s, %(source_topic)s,
           %(source_partition)s, %(source_offset)s, %(payload)s, %(endpoint)s, %(received_at)s,
           %(message)s, false
    WHERE NOT EXISTS (SELECT FROM again)
    ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING
    RETURNING id
)
SELECT id FROM again UNION ALL SELECT id FROM first

-- name: lock_dead_letter
-- Held by whoever produces a dead letter, across transactions, until it is marked published:
-- a second worker recovering the same row skips it, and a dead connection releases it.
SELECT pg_advisory_lock(%(namespace)s, (%(id)s %% 2147483647)::int)

-- name: try_lock_dead_letter
SELECT pg_try_advisory_lock(%(namespace)s, (%(id)s %% 2147483647)::int)

-- name: unlock_dead_letter
SELECT pg_advisory_unlock(%(namespace)s, (%(id)s %% 2147483647)::int)

-- name: dead_letter_to_publish
SELECT message, publishing_at IS NOT NULL FROM ops.dead_letters
WHERE id = %(id)s AND NOT published

-- name: publishing_dead_letter
UPDATE ops.dead_letters SET publishing_at = now() WHERE id = %(id)s

-- name: published_dead_letter
UPDATE ops.dead_letters SET published = true, message = NULL WHERE id = %(id)s

-- name: unpublished_dead_letters
SELECT id FROM ops.dead_letters
WHERE NOT published AND updated_at < now() - %(age)s * interval '1 second'
ORDER BY id

-- name: count_open_dead_letters
SELECT count(*) FROM ops.dead_letters WHERE status = 'open'

-- name: column_names
SELECT a.attname
FROM pg_attribute AS a
WHERE a.attrelid = %(table)s::regclass AND a.attnum > 0 AND NOT a.attisdropped

-- name: upsert_mirror
-- The batch's rows arrive as one JSON array of objects keyed by column, unpacked into the
-- table's row type: no temporary table, so nothing to truncate at commit. The guard makes the
-- upsert reorder-safe: a row only ever moves to a newer event, or is written again from the
-- event it holds (a replay re-projecting it), keeping that event's first position. The result
-- is each row's version before the upsert, from which the writer tells stale events apart.
WITH staged AS (
    SELECT {columns} FROM json_populate_recordset(NULL::{table}, %(rows)s::json)
), prior AS (
    SELECT t.id, t.last_event_created, t.last_event_offset, t.last_event_id
    FROM {table} AS t JOIN staged AS s ON s.id = t.id
), upserted AS (
    INSERT INTO {table} AS t ({columns}, updated_at)
    SELECT {columns}, now() FROM staged ORDER BY id
    ON CONFLICT (id) DO UPDATE SET {assignments}, updated_at = excluded.updated_at,
        last_event_offset = CASE WHEN t.last_event_id = excluded.last_event_id
                                 THEN t.last_event_offset ELSE excluded.last_event_offset END
    WHERE t.last_event_created IS NULL
       OR (t.last_event_id = excluded.last_event_id
           AND t.last_event_created = excluded.last_event_created)
       OR (t.last_event_id IS DISTINCT FROM excluded.last_event_id
           AND (t.last_event_created, coalesce(t.last_event_offset, -1))
               < (excluded.last_event_created, excluded.last_event_offset))
)
SELECT id, extract(epoch FROM last_event_created)::bigint, coalesce(last_event_offset, -1),
       last_event_id
FROM prior
WHERE last_event_created IS NOT NULL

-- name: mark_removed_children
-- Marks removed the children a complete list left out. With s the newest complete list of a
-- parent in this batch, a child is removed when it is older than s (s did not hold it: its rows
-- are at least as new as s), or when this batch just wrote it from an event older than its
-- parent's newest one (the newer list, applied earlier, did not hold it). Both compare versions,
-- so any delivery order gives the same table.
UPDATE {child} AS c SET deleted = true, updated_at = now()
FROM unnest(%(parents)s::text[], %(created)s::bigint[], %(offsets)s::bigint[])
         AS s(parent_id, created, off)
     JOIN {parent} AS p ON p.id = s.parent_id
WHERE c.{parent_column} = s.parent_id
  AND NOT c.deleted
  AND (
      (c.last_event_created, coalesce(c.last_event_offset, -1)) < (to_timestamp(s.created), s.off)
      OR (c.last_event_id = ANY(%(event_ids)s::text[])
          AND (c.last_event_created, coalesce(c.last_event_offset, -1))
              < (p.last_event_created, coalesce(p.last_event_offset, -1)))
  )

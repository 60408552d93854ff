-- Named queries of projections/reconciling.py; {table} is a mirror table, filled in with
-- psycopg.sql.

-- name: mirror_rows
SELECT id, data, deleted, extract(epoch FROM last_event_created)::bigint
FROM {table}
WHERE id = ANY(%(ids)s::text[])

-- name: ties
SELECT "table", object_id FROM ops.ties
WHERE %(table)s::text IS NULL OR "table" = %(table)s
ORDER BY detected_at, "table", object_id

-- name: forget_tie
DELETE FROM ops.ties WHERE "table" = %(table)s AND object_id = %(object_id)s

-- Named queries of projections/shadow.py: mirror tables built beside the live ones, then swapped.

-- name: leftover_schemas
SELECT nspname FROM pg_namespace WHERE nspname LIKE 'stripe\_rebuild\_%' ORDER BY nspname

-- name: dependent_views
-- Views of users over a mirror table would follow the old table out of schema stripe.
SELECT DISTINCT v.oid::regclass::text
FROM pg_depend AS d
JOIN pg_rewrite AS r ON r.oid = d.objid
JOIN pg_class AS v ON v.oid = r.ev_class
WHERE d.refobjid = ANY(%(tables)s::regclass[]) AND v.oid <> d.refobjid
ORDER BY 1

-- name: index_constraints
SELECT conname, pg_get_constraintdef(oid)
FROM pg_constraint
WHERE conrelid = %(table)s::regclass AND contype IN ('p', 'u', 'x')
ORDER BY conname

-- name: plain_indexes
-- Each index not behind a constraint, its definition pointed at the shadow table; the index
-- keeps its name, which is unique per schema.
SELECT replace(
    pg_get_indexdef(i.indexrelid),
    ' ON ' || i.indrelid::regclass::text || ' ',
    ' ON ' || %(shadow)s || ' '
)
FROM pg_index AS i
WHERE i.indrelid = %(table)s::regclass
  AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)
ORDER BY i.indexrelid

-- name: grants
SELECT grantee, privilege_type
FROM information_schema.role_table_grants
WHERE table_schema = %(schema)s AND table_name = %(table)s AND grantee <> grantor
ORDER BY grantee, privilege_type

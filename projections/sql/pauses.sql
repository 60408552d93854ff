-- Named queries of projections/pauses.py. The database's clock decides every pause, so workers
-- and the command line agree on it whatever their own clocks say.

-- name: pause_family
INSERT INTO ops.family_pauses (family, paused_at, resume_at, reason)
VALUES (%(family)s, now(), now() + make_interval(secs => %(seconds)s), %(reason)s)
ON CONFLICT (family) DO UPDATE SET
    paused_at = excluded.paused_at,
    resume_at = excluded.resume_at,
    reason = excluded.reason
RETURNING resume_at

-- name: paused_families
SELECT family, resume_at FROM ops.family_pauses WHERE resume_at > now()

-- name: resume_family
DELETE FROM ops.family_pauses WHERE family = %(family)s RETURNING resume_at > now()

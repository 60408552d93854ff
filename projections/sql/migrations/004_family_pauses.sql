-- Families paused by the dead-letter circuit breaker: while resume_at lies ahead, every worker
-- holds the family's partitions instead of dead-lettering its events. A row whose resume_at has
-- passed pauses nothing; 'stripe-streams dlq resume FAMILY' deletes the row.
CREATE TABLE ops.family_pauses (
    family    text PRIMARY KEY,
    paused_at timestamptz NOT NULL,
    resume_at timestamptz NOT NULL,
    reason    text NOT NULL
);

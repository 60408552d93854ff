-- A replay records where it is in the log, so an interrupted one resumes there; a dead letter
-- keeps the envelope fields its payload lacks, so a retry republishes the event as received.
ALTER TABLE ops.batch_jobs ADD COLUMN position jsonb;
ALTER TABLE ops.dead_letters ADD COLUMN endpoint text;
ALTER TABLE ops.dead_letters ADD COLUMN received_at timestamptz;

-- A dead letter is recorded before it is produced to the dead-letter topic, with the message to
-- produce; publishing_at marks a produce under way, published one that Kafka acknowledged, so a
-- worker that crashed in between checks the topic before producing it again.
ALTER TABLE ops.dead_letters ADD COLUMN message bytea;
ALTER TABLE ops.dead_letters ADD COLUMN publishing_at timestamptz;
ALTER TABLE ops.dead_letters ADD COLUMN published boolean NOT NULL DEFAULT true;
CREATE INDEX dead_letters_unpublished_idx ON ops.dead_letters (id) WHERE NOT published;

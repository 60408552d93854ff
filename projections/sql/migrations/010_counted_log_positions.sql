-- A router that crashed before committing forwards the same log positions again; remembering
-- the newest position whose delivery was counted tells such a copy from a redelivery. Null
-- means the row's own log_offset, so existing rows need no rewrite.
ALTER TABLE ops.event_log ADD COLUMN last_log_offset bigint;

COMMENT ON COLUMN ops.event_log.last_log_offset IS
    'Newest offset in log_partition of <prefix>.events whose delivery deliveries counts '
    '(null: log_offset).';

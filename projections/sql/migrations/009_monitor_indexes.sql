-- The monitoring API's reads stay on indexes as the tables grow: the overview's counts per
-- window read (minute, status, events) alone, and the alerts find recent and open dead letters
-- by when they first failed.
CREATE INDEX event_stats_minute_idx ON ops.event_stats (minute) INCLUDE (status, events);
CREATE INDEX dead_letters_first_failed_idx ON ops.dead_letters (first_failed_at);
CREATE INDEX dead_letters_open_first_failed_idx ON ops.dead_letters (first_failed_at)
    WHERE status = 'open';

COMMENT ON TABLE ops.event_trail IS
    'Stages of events that ops.event_log cannot hold: duplicates, dead letters, retries, '
    'replays and resolutions, one row each, written in the transaction that did it.';

-- Relay messages: one per delivery and relay target, written with the delivery's matched
-- mark, then tried until delivered or dead. Keys are `msg_` and a UUIDv7 in hex, so key
-- order is time order and new rows land at the right edge of the key's index. Rows hold no
-- body (the delivery has it).
CREATE TABLE relay_messages (
    key          TEXT PRIMARY KEY,
    relay        TEXT NOT NULL,
    target       TEXT NOT NULL,
    delivery     BIGINT NOT NULL,
    status       TEXT NOT NULL,
    tries        INTEGER NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,
    due_at       BIGINT,
    lease_until  BIGINT,
    created_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    last_outcome TEXT,
    last_code    INTEGER,
    message      TEXT
);

-- Claims, due times and the pending counts: pending messages only, so it stays as small as
-- the backlog.
CREATE INDEX relay_messages_pending ON relay_messages (relay, target, due_at, created_at)
    WHERE status = 'pending';
-- A target's messages in one status, newest first; also the counts by target and status.
CREATE INDEX relay_messages_by_target ON relay_messages (relay, target, status, key);
-- A relay's messages in one status across its targets, newest first.
CREATE INDEX relay_messages_by_relay ON relay_messages (relay, status, key);

-- Each try of a message, replays included, numbered from 1. Answer bodies are cut to 1 KiB.
CREATE TABLE relay_attempts (
    key         TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    code        INTEGER,
    body        TEXT,
    error       TEXT,
    PRIMARY KEY (key, attempt)
);

-- Targets disabled by a 410 Gone: a row while the target is disabled, kept with the first
-- disabling's time and reason, removed when a replay enables it again.
CREATE TABLE relay_targets (
    relay           TEXT NOT NULL,
    target          TEXT NOT NULL,
    disabled_at     BIGINT NOT NULL,
    disabled_reason TEXT NOT NULL,
    PRIMARY KEY (relay, target)
);

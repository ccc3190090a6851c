-- Relay messages: one per delivery and relay target, written with the delivery's matched
-- mark, then tried until delivered or dead. Keys are `msg_` and a UUIDv7 in hex, so key
-- order is time order: the key is the table's own B-tree key (WITHOUT ROWID), new rows
-- land at its right edge, and "newest first" is a walk down it. Rows hold no body (the
-- delivery has it), so they stay small, as WITHOUT ROWID tables want.
CREATE TABLE relay_messages (
    key          TEXT PRIMARY KEY NOT NULL,
    relay        TEXT NOT NULL,
    target       TEXT NOT NULL,
    delivery     INTEGER NOT NULL,
    status       TEXT NOT NULL,
    tries        INTEGER NOT NULL DEFAULT 0,
    attempts     INTEGER NOT NULL DEFAULT 0,
    due_at       INTEGER,
    lease_until  INTEGER,
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    last_outcome TEXT,
    last_code    INTEGER,
    message      TEXT
) WITHOUT ROWID;

-- Every message is inserted and most are updated once more at the rate deliveries arrive,
-- and each index is one more B-tree written both times; so there are three.
--
-- Claims, due times and the pending counts: pending messages only, so it stays as small as
-- the backlog, and a message leaves it when it is delivered or dies. created_at rides along
-- so the metrics' oldest-pending scan reads this index alone.
CREATE INDEX relay_messages_pending ON relay_messages (relay, target, due_at, created_at)
    WHERE status = 'pending';
-- A target's messages in one status, newest first (the key, last, orders them); a target's
-- messages in any status are the merge of its three ranges. Also the counts by target and
-- status, read from this index alone.
CREATE INDEX relay_messages_by_target ON relay_messages (relay, target, status, key);
-- A relay's messages in one status (or, merged, in any) across its targets, newest first.
-- Listing without a relay walks the table's own key.
CREATE INDEX relay_messages_by_relay ON relay_messages (relay, status, key);

-- Each try of a message, replays included, numbered from 1. Answer bodies are cut to
-- 1 KiB, and most receivers answer a few bytes, so rows stay small enough to live in the
-- key's B-tree too.
CREATE TABLE relay_attempts (
    key         TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    code        INTEGER,
    body        TEXT,
    error       TEXT,
    PRIMARY KEY (key, attempt)
) WITHOUT ROWID;

-- Targets disabled by a 410 Gone: a row while the target is disabled, kept with the first
-- disabling's time and reason, removed when a replay enables it again.
CREATE TABLE relay_targets (
    relay           TEXT NOT NULL,
    target          TEXT NOT NULL,
    disabled_at     INTEGER NOT NULL,
    disabled_reason TEXT NOT NULL,
    PRIMARY KEY (relay, target)
);

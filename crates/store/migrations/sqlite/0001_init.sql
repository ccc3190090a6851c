-- Runs, their stages and attempts, and the queue of due work (tasks).
-- Times are milliseconds since the Unix epoch; JSON columns hold text.

CREATE TABLE runs (
    id               TEXT PRIMARY KEY NOT NULL,
    workflow         TEXT NOT NULL,
    status           TEXT NOT NULL,
    spec             TEXT NOT NULL,
    event            TEXT NOT NULL,
    trigger_info     TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    message          TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
);
CREATE INDEX runs_by_status ON runs (status, created_at);
CREATE INDEX runs_by_workflow ON runs (workflow, created_at);

CREATE TABLE stages (
    run_id      TEXT NOT NULL REFERENCES runs (id),
    stage_id    TEXT NOT NULL,
    position    INTEGER NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT,
    message     TEXT,
    attempt     INTEGER NOT NULL DEFAULT 0,
    phase       TEXT,
    input       TEXT,
    external    TEXT,
    outputs     TEXT,
    signal      TEXT,
    started_at  INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (run_id, stage_id)
);

CREATE TABLE attempts (
    run_id      TEXT NOT NULL,
    stage_id    TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    reason      TEXT,
    message     TEXT,
    external    TEXT,
    started_at  INTEGER,
    finished_at INTEGER,
    PRIMARY KEY (run_id, stage_id, attempt)
);

CREATE TABLE tasks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    stage_id    TEXT NOT NULL DEFAULT '',
    kind        TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 0,
    due_at      INTEGER NOT NULL,
    lease_until INTEGER,
    version     INTEGER NOT NULL DEFAULT 0,
    UNIQUE (run_id, stage_id, kind)
);
CREATE INDEX tasks_by_due ON tasks (due_at);

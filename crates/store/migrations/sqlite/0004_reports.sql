-- The report outbox: one row per run, source and context (stage_id '' for the run) whose
-- status is waiting to be posted. A newer change of the same context bumps `version` and
-- makes the row due at once; the reporter removes a row only at the version it posted.
CREATE TABLE reports (
    id           INTEGER PRIMARY KEY,
    run_id       TEXT NOT NULL,
    source       TEXT NOT NULL,
    stage_id     TEXT NOT NULL,
    version      INTEGER NOT NULL,
    due_at       INTEGER NOT NULL,
    tries        INTEGER NOT NULL DEFAULT 0,
    first_try_at INTEGER,
    lease_until  INTEGER,
    UNIQUE (run_id, source, stage_id)
);
CREATE INDEX reports_due ON reports (due_at);

-- Fencing (see `Change::Fence`): a run's version, bumped by every fenced commit, and each
-- task's claim token. The token counts per task: every claim (and every reschedule, which
-- ends a claim) adds one, so a token held by a step that lost its claim never matches again.
ALTER TABLE runs ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;

-- What replicas sharing this database need: claims that carry tokens, and run versions,
-- so a process that lost a claim cannot write over the one that took it.

-- Every claim (of a task, a delivery, an outbox row or a relay message) takes a new token
-- from here; a write made under a claim checks its token is still the row's.
CREATE SEQUENCE lease_tokens AS BIGINT;

-- Bumped by every fenced commit of the run (Change::Fence).
ALTER TABLE runs ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

-- The token of the task's latest claim; 0 before its first.
ALTER TABLE tasks ADD COLUMN lease_token BIGINT NOT NULL DEFAULT 0;
-- Run affinity: a claim looks up the run's live leases.
CREATE INDEX tasks_by_run_lease ON tasks (run_id, lease_until) WHERE lease_until IS NOT NULL;

-- Deliveries are claimed for matching: by the replica that stored them, at insert, or by
-- any replica once that claim has expired. claim_until is NULL once matched.
ALTER TABLE deliveries ADD COLUMN claim_until BIGINT;
ALTER TABLE deliveries ADD COLUMN claim_token BIGINT NOT NULL DEFAULT 0;
-- Deliveries still to be matched, whoever holds them: a partial index stays as small as
-- the backlog, and replaces the one over every status, so an insert writes one index
-- fewer.
CREATE INDEX deliveries_unmatched ON deliveries (seq) WHERE status IN ('received', 'replay');
DROP INDEX deliveries_pending;

-- Outbox rows and relay messages are claimed with tokens too.
ALTER TABLE reports ADD COLUMN lease_token BIGINT NOT NULL DEFAULT 0;
ALTER TABLE relay_messages ADD COLUMN lease_token BIGINT NOT NULL DEFAULT 0;

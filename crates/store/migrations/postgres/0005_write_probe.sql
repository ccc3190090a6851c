-- Scratch space for readiness's test write: a row is written and removed in one
-- transaction, so the table is always empty.
CREATE TABLE write_probe (
    pad BYTEA NOT NULL
);

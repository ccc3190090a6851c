-- Matching records its progress with one row per pass ("every delivery up to through_seq
-- is matched") instead of updating every delivery: on the intake's hot path a delivery is
-- then written once. A delivery keeps status 'received' until a pass covers it; one that
-- started runs, failed, or was replayed still gets its own status.
CREATE TABLE delivery_passes (
    through_seq INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL
);

-- Deliveries already handled before this migration are covered by a first pass, so the
-- pending scan starts after them rather than at the first row.
INSERT INTO delivery_passes (through_seq, at)
SELECT through_seq, 0 FROM (
    SELECT COALESCE((SELECT MIN(seq) FROM deliveries WHERE status = 'received') - 1,
                    (SELECT MAX(seq) FROM deliveries)) AS through_seq)
WHERE through_seq > 0;

-- The table again without AUTOINCREMENT, whose counter row was one more page written in
-- every commit (and a number used up by every duplicate). Rows are never deleted, so a
-- plain rowid key never gives an id twice. Pending deliveries are found from the last pass
-- by seq, so only replays need an index besides the one that finds duplicates.
CREATE TABLE deliveries_new (
    seq          INTEGER PRIMARY KEY,
    source       TEXT NOT NULL,
    delivery_id  TEXT NOT NULL,
    event        TEXT NOT NULL,
    headers      TEXT NOT NULL,
    body         TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    status       TEXT NOT NULL,
    runs         TEXT NOT NULL DEFAULT '[]',
    message      TEXT,
    processed_at INTEGER,
    UNIQUE (source, delivery_id)
);
INSERT INTO deliveries_new SELECT * FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
DELETE FROM sqlite_sequence WHERE name = 'deliveries';
CREATE INDEX deliveries_replays ON deliveries (seq) WHERE status = 'replay';

-- Deliveries as people see them: covered by a pass means processed, at the pass's time;
-- a replay waiting is shown as received.
CREATE VIEW deliveries_seen AS
SELECT seq, source, delivery_id, event, headers, body, received_at,
       CASE WHEN status = 'replay' THEN 'received'
            WHEN status = 'received' AND passed_at IS NOT NULL THEN 'processed'
            ELSE status END AS status,
       runs, message,
       CASE WHEN status = 'received' THEN passed_at ELSE processed_at END AS processed_at
FROM (SELECT d.*, (SELECT p.at FROM delivery_passes p WHERE p.through_seq >= d.seq
                   ORDER BY p.through_seq LIMIT 1) AS passed_at
      FROM deliveries d);

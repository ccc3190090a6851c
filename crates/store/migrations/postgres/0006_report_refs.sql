-- What a reporter made at the far end for one run and source (a GitHub check run), named
-- in the reporter's own words, so a restarted reporter updates the same object rather than
-- making a second one. One row per run and source; a later write replaces it.
CREATE TABLE report_refs (
    run_id    TEXT NOT NULL,
    source    TEXT NOT NULL,
    reference TEXT NOT NULL,
    PRIMARY KEY (run_id, source)
);

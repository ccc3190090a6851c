-- On PostgreSQL every delivery is matched under a claim of its own (0008), and the claim's
-- release is the row's own update, so there is no table of matching passes: a delivery's
-- status says whether it was matched. Only replays need a quick way in.
CREATE INDEX deliveries_replays ON deliveries (seq) WHERE status = 'replay';

-- Webhook deliveries: stored before the sender gets its 2xx; processed (matched to
-- workflows) afterwards. `seq` is the public id.

CREATE TABLE deliveries (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
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
CREATE INDEX deliveries_pending ON deliveries (status, seq);

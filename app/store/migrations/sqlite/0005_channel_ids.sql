-- Records keyed by a channel number instead of the (app, channel) text pair, in a rowid table.
-- A batch spread over many channels writes one leaf page per channel in each B-tree keyed by
-- channel, and every dirty page is a 4 KiB frame in the WAL. In a rowid table a batch's rows
-- land together on the last pages; only the two small indexes are keyed by channel, and with a
-- number there their entries are a third as long. The writer thread spends about a third less
-- per record (bench/RESULTS.md, notes). `channels` also takes over `channel_counts` (counted
-- again here from the records themselves).
CREATE TABLE channels (
    id INTEGER PRIMARY KEY,
    app TEXT NOT NULL,
    name TEXT NOT NULL,
    records INTEGER NOT NULL,
    UNIQUE (app, name)
) STRICT;

INSERT INTO channels (app, name, records)
SELECT app, channel, COUNT(*) FROM records GROUP BY app, channel ORDER BY app, channel;

CREATE TABLE records_by_channel_id (
    channel_id INTEGER NOT NULL REFERENCES channels (id),
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    created INTEGER NOT NULL,
    username TEXT,
    data TEXT NOT NULL,
    text TEXT
) STRICT;

INSERT INTO records_by_channel_id
SELECT channels.id, seq, records.id, client_id, created, username, data, text
FROM records JOIN channels ON channels.app = records.app AND channels.name = records.channel
ORDER BY channels.id, seq;

DROP TABLE records;
DROP TABLE channel_counts;
ALTER TABLE records_by_channel_id RENAME TO records;
CREATE UNIQUE INDEX records_by_seq ON records (channel_id, seq);
CREATE INDEX records_by_created ON records (channel_id, created, seq);

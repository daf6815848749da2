-- How many records each channel holds, raised in the transaction that appends them. A repeated
-- search compares it with the count it kept to tell whether records arrived below the seq it
-- had counted up to (app/store/search.py).
CREATE TABLE channel_counts (
    app TEXT NOT NULL,
    channel TEXT NOT NULL,
    records INTEGER NOT NULL,
    PRIMARY KEY (app, channel)
) STRICT, WITHOUT ROWID;

INSERT INTO channel_counts (app, channel, records)
SELECT app, channel, COUNT(*) FROM records GROUP BY app, channel;

-- How many records each channel holds, raised by the store in the transaction that appends a
-- batch (one update per channel, not a trigger's one per row, which would leave a dead row
-- version behind per record). A repeated
-- search compares it with the count it kept to tell whether records arrived below the seq it
-- had counted up to (app/store/search.py).
CREATE TABLE channel_counts (
    app TEXT NOT NULL,
    channel TEXT NOT NULL,
    records BIGINT NOT NULL,
    PRIMARY KEY (app, channel)
);

INSERT INTO channel_counts (app, channel, records)
SELECT app, channel, COUNT(*) FROM records GROUP BY app, channel;

-- How many records each channel holds, raised in the transaction that appends them (here by a
-- trigger, so every insert counts; the PostgreSQL store raises it per batch instead). A repeated
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

CREATE TRIGGER records_counted AFTER INSERT ON records BEGIN
    INSERT INTO channel_counts (app, channel, records) VALUES (NEW.app, NEW.channel, 1)
    ON CONFLICT (app, channel) DO UPDATE SET records = records + 1;
END;

-- The store raises channel_counts once per channel per batch, in the appending transaction (as
-- the PostgreSQL store always has), instead of a trigger per inserted row: a batch spread over
-- many channels spent a fifth of its time in the trigger.
DROP TRIGGER IF EXISTS records_counted;

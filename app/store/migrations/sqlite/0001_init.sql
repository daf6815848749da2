CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL UNIQUE,
    secret TEXT NOT NULL,
    created INTEGER NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}'
) STRICT;

CREATE TABLE records (
    app TEXT NOT NULL,
    channel TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    created INTEGER NOT NULL,
    username TEXT,
    data TEXT NOT NULL,
    text TEXT,
    PRIMARY KEY (app, channel, seq)
) STRICT, WITHOUT ROWID;

CREATE INDEX records_by_created ON records (app, channel, created, seq);

CREATE TABLE widgets (
    app TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    html TEXT NOT NULL,
    css TEXT NOT NULL,
    js TEXT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (app, id)
);

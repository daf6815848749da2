CREATE TABLE apps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL UNIQUE,
    secret TEXT NOT NULL,
    created BIGINT NOT NULL,
    settings JSONB NOT NULL DEFAULT '{}'
);

-- The primary key serves read_range (seq > n ORDER BY seq), last_seq (MAX(seq)) and
-- filters or sorts on seq within a channel.
CREATE TABLE records (
    app TEXT NOT NULL,
    channel TEXT NOT NULL,
    seq BIGINT NOT NULL,
    id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    created BIGINT NOT NULL,
    username TEXT,
    data JSONB NOT NULL,
    text TEXT,
    PRIMARY KEY (app, channel, seq)
);

-- Serves the default search (sortField created, ties on seq) and `created` range filters,
-- such as the history view's "since": one index scan in order, no sort.
CREATE INDEX records_by_created ON records (app, channel, created, seq);

-- Serves `=` filters on data paths: the compiler adds `data @> '{"a":{"b":value}}'`, which this
-- index answers, before the exact type-aware comparison. Other operators (ranges, exists,
-- contains, !=, nin) read the channel's rows through the indexes above.
CREATE INDEX records_data ON records USING GIN (data jsonb_path_ops);

-- JSON text as SQLite's json_extract renders an object or array: compact, no spaces. Search sorts
-- objects and arrays by this text, so they order among strings as they do in SQLite (only the
-- key order can differ: JSONB keeps keys sorted, SQLite as written).
CREATE FUNCTION c8ws_json_text(value jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
BEGIN
    RETURN CASE jsonb_typeof(value)
        WHEN 'object' THEN '{' || COALESCE((
            SELECT string_agg(to_jsonb(e.key)::text || ':' || c8ws_json_text(e.item), ','
                              ORDER BY e.n)
            FROM jsonb_each(value) WITH ORDINALITY AS e(key, item, n)), '') || '}'
        WHEN 'array' THEN '[' || COALESCE((
            SELECT string_agg(c8ws_json_text(e.item), ',' ORDER BY e.n)
            FROM jsonb_array_elements(value) WITH ORDINALITY AS e(item, n)), '') || ']'
        ELSE value::text
    END;
END
$$;

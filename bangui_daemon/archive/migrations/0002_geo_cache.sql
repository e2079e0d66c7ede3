-- Geo answers per address, positive and negative. last_seen is refreshed (in batches)
-- whenever an answer is used, so the cleanup task can drop what nobody asked for.
CREATE TABLE geo_cache (
    ip           TEXT    PRIMARY KEY,
    found        INTEGER NOT NULL,            -- 0 = negative entry
    country_code TEXT    NOT NULL DEFAULT '',
    country_name TEXT    NOT NULL DEFAULT '',
    asn          TEXT    NOT NULL DEFAULT '',
    org          TEXT    NOT NULL DEFAULT '',
    source       TEXT    NOT NULL,            -- mmdb | api | none
    db_build     TEXT    NOT NULL DEFAULT '', -- which database build answered
    resolved_at  INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX geo_cache_last_seen ON geo_cache (last_seen);
CREATE INDEX geo_cache_country ON geo_cache (country_code);
CREATE INDEX geo_cache_asn ON geo_cache (asn);

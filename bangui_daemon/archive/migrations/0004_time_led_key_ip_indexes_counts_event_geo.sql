-- Make a sync's cost depend on its new rows, not on the archive's size, and make
-- `total` cheap for filters that match most of the archive.
--
-- 1. The natural key is led by time. New events have recent times, so inserting them
--    touches the right edge of the key's index only; an ip-led key took a random leaf
--    per row, and how many distinct leaves 1,000 rows dirty grows with the archive.
-- 2. Per-address lookups use two partial indexes on (ip, timeofban), told apart by
--    `ip_indexed`. Small writes (incremental syncs, the ban watch) land in the
--    "recent" index, which stays small; the archive folds them into the main one in
--    batches (events_repo.merge_recent_ips), where a leaf takes many rows at once.
--    Bulk pages (a first sync) go straight to the main index.
-- 3. ban_event_hours keeps event counts per hour, jail, action and origin, kept exact
--    by triggers on every write: GetHistory's total over a time range is the sum of
--    whole hours plus an exact count of the two partial hours at its ends.
-- 4. Each event keeps the country and ASN its address resolved to: set at insert
--    when geo_cache knows the address, else when geo_cache first learns it (triggers
--    below). The event keeps them after the cache entry is cleaned up, so history
--    says "from where" for its whole retention; ban_event_country_hours and a
--    (country_code, timeofban) index make a country filter as cheap as a jail one.
--
-- The table is rebuilt: SQLite cannot drop a UNIQUE constraint in place.

CREATE TABLE ban_events_v4 (
    id          INTEGER PRIMARY KEY,
    action      TEXT    NOT NULL CHECK (action IN ('ban', 'unban')),
    jail        TEXT    NOT NULL,
    ip          TEXT    NOT NULL,
    timeofban   INTEGER NOT NULL,           -- for an unban: when the ban was lifted
    bantime     INTEGER NOT NULL DEFAULT 0, -- seconds, -1 = permanent
    bancount    INTEGER NOT NULL DEFAULT 1,
    data        BLOB,                       -- fail2ban's JSON (failures, matches), verbatim
    origin      TEXT    NOT NULL DEFAULT 'selfblock' CHECK (origin IN ('selfblock', 'blocklist')),
    recorded_by TEXT    NOT NULL DEFAULT 'history_sync',
    ip_indexed  INTEGER NOT NULL DEFAULT 0 CHECK (ip_indexed IN (0, 1)), -- 1: in ban_events_ip
    country_code TEXT   NOT NULL DEFAULT '',  -- from geo_cache; '' = not known
    asn         TEXT    NOT NULL DEFAULT '',
    -- floor(timeofban / 3600): the key of the hourly counts, computed in one place
    hour        INTEGER GENERATED ALWAYS AS (
        CASE WHEN timeofban >= 0 THEN timeofban / 3600 ELSE (timeofban - 3599) / 3600 END
    ) VIRTUAL,
    UNIQUE (timeofban, jail, ip, action)
);
INSERT INTO ban_events_v4 (id, action, jail, ip, timeofban, bantime, bancount, data, origin,
                           recorded_by, ip_indexed, country_code, asn)
SELECT e.id, e.action, e.jail, e.ip, e.timeofban, e.bantime, e.bancount, e.data, e.origin,
       e.recorded_by, 1, coalesce(g.country_code, ''), coalesce(g.asn, '')
FROM ban_events AS e LEFT JOIN geo_cache AS g ON g.ip = e.ip AND g.found = 1
ORDER BY e.id;
DROP TABLE ban_events;  -- drops its indexes too
ALTER TABLE ban_events_v4 RENAME TO ban_events;

CREATE INDEX ban_events_ip ON ban_events (ip, timeofban) WHERE ip_indexed = 1;
CREATE INDEX ban_events_ip_recent ON ban_events (ip, timeofban) WHERE ip_indexed = 0;
CREATE INDEX ban_events_jail_time ON ban_events (jail, timeofban);
-- Events recorded live by the ban watch, waiting for fail2ban's row to fill in `data`.
CREATE INDEX ban_events_from_watch ON ban_events (jail, ip, timeofban)
    WHERE recorded_by = 'ban_watch';
-- Newly resolved events have recent times: they land at the end of their country's range.
CREATE INDEX ban_events_country_time ON ban_events (country_code, timeofban)
    WHERE country_code != '';

CREATE TABLE ban_event_hours (
    hour   INTEGER NOT NULL,  -- ban_events.hour
    jail   TEXT    NOT NULL,
    action TEXT    NOT NULL,
    origin TEXT    NOT NULL,
    events INTEGER NOT NULL,
    PRIMARY KEY (hour, jail, action, origin)
) WITHOUT ROWID;

INSERT INTO ban_event_hours (hour, jail, action, origin, events)
SELECT hour, jail, action, origin, count(*) FROM ban_events GROUP BY 1, 2, 3, 4;

CREATE TRIGGER ban_events_count_insert AFTER INSERT ON ban_events BEGIN
    INSERT INTO ban_event_hours (hour, jail, action, origin, events)
    VALUES (NEW.hour, NEW.jail, NEW.action, NEW.origin, 1)
    ON CONFLICT DO UPDATE SET events = events + 1;
END;

CREATE TRIGGER ban_events_count_delete AFTER DELETE ON ban_events BEGIN
    UPDATE ban_event_hours SET events = events - 1
    WHERE hour = OLD.hour AND jail = OLD.jail AND action = OLD.action AND origin = OLD.origin;
END;

CREATE TRIGGER ban_events_count_update AFTER UPDATE OF timeofban, jail, action, origin
ON ban_events BEGIN
    UPDATE ban_event_hours SET events = events - 1
    WHERE hour = OLD.hour AND jail = OLD.jail AND action = OLD.action AND origin = OLD.origin;
    INSERT INTO ban_event_hours (hour, jail, action, origin, events)
    VALUES (NEW.hour, NEW.jail, NEW.action, NEW.origin, 1)
    ON CONFLICT DO UPDATE SET events = events + 1;
END;

CREATE TABLE ban_event_country_hours (
    country_code TEXT    NOT NULL,
    hour         INTEGER NOT NULL,
    jail         TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    origin       TEXT    NOT NULL,
    events       INTEGER NOT NULL,
    PRIMARY KEY (country_code, hour, jail, action, origin)
) WITHOUT ROWID;

INSERT INTO ban_event_country_hours (country_code, hour, jail, action, origin, events)
SELECT country_code, hour, jail, action, origin, count(*)
FROM ban_events WHERE country_code != '' GROUP BY 1, 2, 3, 4, 5;

CREATE TRIGGER ban_events_country_insert AFTER INSERT ON ban_events
WHEN NEW.country_code != '' BEGIN
    INSERT INTO ban_event_country_hours (country_code, hour, jail, action, origin, events)
    VALUES (NEW.country_code, NEW.hour, NEW.jail, NEW.action, NEW.origin, 1)
    ON CONFLICT DO UPDATE SET events = events + 1;
END;

CREATE TRIGGER ban_events_country_delete AFTER DELETE ON ban_events
WHEN OLD.country_code != '' BEGIN
    UPDATE ban_event_country_hours SET events = events - 1
    WHERE country_code = OLD.country_code
      AND hour = OLD.hour AND jail = OLD.jail AND action = OLD.action AND origin = OLD.origin;
END;

CREATE TRIGGER ban_events_country_update
AFTER UPDATE OF timeofban, jail, action, origin, country_code ON ban_events BEGIN
    UPDATE ban_event_country_hours SET events = events - 1
    WHERE OLD.country_code != '' AND country_code = OLD.country_code
      AND hour = OLD.hour AND jail = OLD.jail AND action = OLD.action AND origin = OLD.origin;
    INSERT INTO ban_event_country_hours (country_code, hour, jail, action, origin, events)
    SELECT NEW.country_code, NEW.hour, NEW.jail, NEW.action, NEW.origin, 1
    WHERE NEW.country_code != ''
    ON CONFLICT DO UPDATE SET events = events + 1;
END;

-- geo_cache learned (or changed) what an address resolves to: its events take it. A
-- negative answer (found = 0), or an empty field of a found one (say the country
-- database is missing), changes nothing: what was known stays known.
CREATE TRIGGER geo_cache_to_events_insert AFTER INSERT ON geo_cache
WHEN NEW.found = 1 BEGIN
    UPDATE ban_events
    SET country_code = CASE WHEN NEW.country_code != '' THEN NEW.country_code
                            ELSE country_code END,
        asn = CASE WHEN NEW.asn != '' THEN NEW.asn ELSE asn END
    WHERE ((ip_indexed = 1 AND ip = NEW.ip) OR (ip_indexed = 0 AND ip = NEW.ip))
      AND ((NEW.country_code != '' AND country_code != NEW.country_code)
           OR (NEW.asn != '' AND asn != NEW.asn));
END;

CREATE TRIGGER geo_cache_to_events_update AFTER UPDATE OF found, country_code, asn ON geo_cache
WHEN NEW.found = 1 AND (OLD.found != 1 OR OLD.country_code IS NOT NEW.country_code
                        OR OLD.asn IS NOT NEW.asn) BEGIN
    UPDATE ban_events
    SET country_code = CASE WHEN NEW.country_code != '' THEN NEW.country_code
                            ELSE country_code END,
        asn = CASE WHEN NEW.asn != '' THEN NEW.asn ELSE asn END
    WHERE ((ip_indexed = 1 AND ip = NEW.ip) OR (ip_indexed = 0 AND ip = NEW.ip))
      AND ((NEW.country_code != '' AND country_code != NEW.country_code)
           OR (NEW.asn != '' AND asn != NEW.asn));
END;

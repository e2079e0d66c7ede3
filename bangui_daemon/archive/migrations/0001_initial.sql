-- Ban events copied from fail2ban (history sync) or seen live (ban watch, UnbanIp).
-- The natural key makes every writer idempotent: a re-run never duplicates.
-- `data` is copied verbatim so the copy costs what a raw INSERT ... SELECT costs;
-- it is decoded only for the rows a query returns.
CREATE TABLE ban_events (
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
    -- ip leads the natural key so that this one index also serves per-address and
    -- network queries: a second ip-keyed index would double the random page writes.
    UNIQUE (ip, timeofban, jail, action)
);
CREATE INDEX ban_events_time ON ban_events (timeofban, action);  -- covers since+action counts
CREATE INDEX ban_events_jail_time ON ban_events (jail, timeofban);

-- Small durable key/value state: high-water marks, fingerprints.
CREATE TABLE daemon_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Events recorded live by the ban watch, waiting for fail2ban's row to fill in `data`.
CREATE INDEX ban_events_from_watch ON ban_events (jail, ip, timeofban)
    WHERE recorded_by = 'ban_watch';

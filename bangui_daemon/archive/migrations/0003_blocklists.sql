-- Blocklist sources, their import runs, what each source lists and what imports banned.
CREATE TABLE blocklist_sources (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    url           TEXT    NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1,
    etag          TEXT,
    last_modified TEXT,
    last_run      INTEGER NOT NULL DEFAULT 0,
    last_status   TEXT    NOT NULL DEFAULT '',
    last_imported INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT    NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL
);

-- One row per (source, content): the key that makes an import exactly-once per content.
CREATE TABLE import_runs (
    id           INTEGER PRIMARY KEY,
    source_id    INTEGER NOT NULL REFERENCES blocklist_sources (id) ON DELETE CASCADE,
    content_hash TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER NOT NULL DEFAULT 0,
    entries      INTEGER NOT NULL DEFAULT 0,
    imported     INTEGER NOT NULL DEFAULT 0,
    removed      INTEGER NOT NULL DEFAULT 0,
    invalid      INTEGER NOT NULL DEFAULT 0,
    refused      INTEGER NOT NULL DEFAULT 0,
    error        TEXT    NOT NULL DEFAULT '',
    UNIQUE (source_id, content_hash)
);
CREATE INDEX import_runs_started ON import_runs (started_at);

-- What each source listed at its last completed import (the base of the next diff).
CREATE TABLE source_entries (
    source_id INTEGER NOT NULL REFERENCES blocklist_sources (id) ON DELETE CASCADE,
    entry     TEXT    NOT NULL,
    PRIMARY KEY (source_id, entry)
) WITHOUT ROWID;
CREATE INDEX source_entries_entry ON source_entries (entry);

-- Entries an import banned. 'pending' is written before the banip is sent, so a
-- crash in between can be told apart from a ban fail2ban made by itself.
CREATE TABLE import_bans (
    entry     TEXT    NOT NULL PRIMARY KEY,
    jail      TEXT    NOT NULL,
    run_id    INTEGER NOT NULL,
    state     TEXT    NOT NULL CHECK (state IN ('pending', 'banned')),
    banned_at INTEGER NOT NULL
) WITHOUT ROWID;

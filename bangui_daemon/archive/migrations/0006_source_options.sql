-- Per-source options and who manages a source: '' (D-Bus callers), 'config'
-- ([[blocklist.source]] tables) or 'crowdsec' (the [crowdsec] section's feed).
-- interval and max_entries 0 mean "the [tasks]/[blocklist] default".
ALTER TABLE blocklist_sources ADD COLUMN managed TEXT NOT NULL DEFAULT '';
ALTER TABLE blocklist_sources ADD COLUMN interval INTEGER NOT NULL DEFAULT 0;
ALTER TABLE blocklist_sources ADD COLUMN max_entries INTEGER NOT NULL DEFAULT 0;

"""A hand copy of fail2ban's on-disk schema, for unit tests that need a fail2ban DB."""

# fail2ban 0.11 .. 1.1 (schema version 4), as `sqlite3 fail2ban.sqlite3 .schema` prints it.
SCHEMA_V4 = """
CREATE TABLE fail2banDb(version INTEGER);
CREATE TABLE jails(name TEXT NOT NULL UNIQUE, enabled INTEGER NOT NULL DEFAULT 1);
CREATE INDEX jails_name ON jails(name);
CREATE TABLE logs(jail TEXT NOT NULL, path TEXT, firstlinemd5 TEXT,
  lastfilepos INTEGER DEFAULT 0, FOREIGN KEY(jail) REFERENCES jails(name) ON DELETE CASCADE,
  UNIQUE(jail, path), UNIQUE(jail, path, firstlinemd5));
CREATE TABLE bans(jail TEXT NOT NULL, ip TEXT, timeofban INTEGER NOT NULL,
  bantime INTEGER NOT NULL, bancount INTEGER NOT NULL default 1, data JSON,
  FOREIGN KEY(jail) REFERENCES jails(name));
CREATE INDEX bans_jail_timeofban_ip ON bans(jail, timeofban);
CREATE INDEX bans_jail_ip ON bans(jail, ip);
CREATE INDEX bans_ip ON bans(ip);
CREATE TABLE bips(ip TEXT NOT NULL, jail TEXT NOT NULL, timeofban INTEGER NOT NULL,
  bantime INTEGER NOT NULL, bancount INTEGER NOT NULL default 1, data JSON,
  PRIMARY KEY(ip, jail), FOREIGN KEY(jail) REFERENCES jails(name));
INSERT INTO fail2banDb(version) VALUES (4);
INSERT INTO jails(name) VALUES ('sshd'), ('blocklist-import');
"""

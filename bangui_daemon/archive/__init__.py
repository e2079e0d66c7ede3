"""The daemon's own sqlite archive: connection, migrations, repositories."""

"""The D-Bus edge: one module per interface. The only place that imports dbus_fast."""

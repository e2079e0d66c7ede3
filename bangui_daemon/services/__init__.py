"""Use-cases the D-Bus edge calls."""

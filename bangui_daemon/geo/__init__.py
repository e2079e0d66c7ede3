"""Geo: MMDB lookups and the geo cache."""

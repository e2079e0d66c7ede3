"""Blocklists: fetch, parse, safety policy, import workflow."""

"""CrowdSec Local API client (bouncer and machine)."""

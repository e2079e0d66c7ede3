"""Geo: country/ASN answers from the MMDB files and the optional HTTP fallback.

The cache of answers is not here: its rows are archive/geo_repo.py, its memory and
batched writes services/geo_cache.py.
"""

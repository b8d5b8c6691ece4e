"""Managed virtual keys: records, secrets (kept only as hashes) and their SQLite store."""

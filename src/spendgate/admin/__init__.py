"""The admin HTTP API (managed keys, burst grants, budget status)."""

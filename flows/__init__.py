"""Prefect flows: thin orchestration over the `magpipe` library (no numerics here)."""

"""Helpers for tests/test_scale_out.py: a real Prefect server and workers as child processes."""

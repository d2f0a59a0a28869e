"""Helpers for the executor tests (fixtures live in `fixtures.py`)."""

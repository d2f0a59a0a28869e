"""Test helpers for the provider emulator (fixtures live in `fixtures.py`)."""

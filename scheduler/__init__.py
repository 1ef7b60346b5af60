"""Scheduling decisions as pure functions over plain data: no torch or ray at import time."""

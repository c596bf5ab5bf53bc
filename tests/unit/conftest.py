"""Fixtures of the unit tests: Podium in-process on SQLite (tests/support/inproc.py)."""

from tests.support.inproc import runtime

__all__ = ["runtime"]

"""What a transition answers when it cannot apply: a defined result the caller maps to HTTP
(404, 409) or acts on, never an exception of the store leaking out as a 500."""

from __future__ import annotations

from typing import Any


class TransitionError(Exception):
    """A transition that cannot apply. ``code`` is stable; ``details`` go into the error body."""

    status = 409

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class NotFound(TransitionError):
    status = 404

    def __init__(self, resource: str, resource_id: str) -> None:
        # The same answer whether it does not exist or belongs to another tenant.
        super().__init__("not_found", f"{resource} {resource_id!r} was not found")


class Conflict(TransitionError):
    """The state moved on: finished, busy, not in the state the transition needs."""

"""Two rules of the store, checked at run time (docs/architecture.md, "Rules"):

- **One owner of run state.** Rows of runs, agent calls, threads, thread events and
  decisions are written only inside ``owner_writes()``, which only ``podium.lifecycle`` enters.
  Any other write to those tables raises ``ForeignWrite`` before it reaches the database.
- **No network call inside a transaction.** An LLM call made while this thread holds a
  database connection (a transaction open, a row lock possibly held) is a violation:
  ``check_no_connection`` logs it, appends it to the file named by ``PODIUM_GUARD_REPORT``
  (the test suite reads that file after every test) and, with ``PODIUM_STRICT_GUARDS=1``,
  raises ``NetworkCallInTransaction``.

Both hooks are installed on every engine ``podium.store.db`` makes; each costs a type check
or a thread-local lookup per statement or call.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.sql.dml import UpdateBase

log = logging.getLogger(__name__)

OWNED_TABLES = frozenset(
    {"runs", "agent_calls", "threads", "thread_events", "orchestration_decisions"}
)

_owner: contextvars.ContextVar[bool] = contextvars.ContextVar("podium_owner_writes", default=False)
_held = threading.local()


class ForeignWrite(RuntimeError):
    """A write to run, call or thread state from outside the run lifecycle."""


class NetworkCallInTransaction(RuntimeError):
    """An LLM (network) call while a database connection is checked out by this thread."""


@contextmanager
def owner_writes() -> Iterator[None]:
    token = _owner.set(True)
    try:
        yield
    finally:
        _owner.reset(token)


def _check_write(_conn: Any, clause: Any, _multi: Any, _params: Any, _options: Any) -> None:
    if not isinstance(clause, UpdateBase) or _owner.get():
        return
    table = getattr(getattr(clause, "table", None), "name", None)
    if table in OWNED_TABLES:
        raise ForeignWrite(
            f"{type(clause).__name__.removeprefix('Annotated').lower()} on {table!r} outside "
            "podium.lifecycle: run, call and thread state has one owner"
        )


def _checked_out(_dbapi: Any, record: Any, _proxy: Any) -> None:
    _held.count = getattr(_held, "count", 0) + 1
    record.info["podium_thread"] = threading.get_ident()


def _checked_in(_dbapi: Any, record: Any) -> None:
    if record.info.pop("podium_thread", None) == threading.get_ident():
        _held.count = max(0, getattr(_held, "count", 0) - 1)


def install(engine: Engine) -> None:
    event.listen(engine, "before_execute", _check_write)
    event.listen(engine, "checkout", _checked_out)
    event.listen(engine, "checkin", _checked_in)


def connections_held() -> int:
    """Database connections this thread has checked out right now."""
    return int(getattr(_held, "count", 0))


def check_no_connection(what: str) -> None:
    """Call before any network call that may wait (an LLM call)."""
    if connections_held() == 0:
        return
    stack = "".join(traceback.format_stack(limit=12)[:-1])
    message = f"{what} while holding a database connection (transaction open)"
    log.error("%s\n%s", message, stack)
    report = os.environ.get("PODIUM_GUARD_REPORT")
    if report:
        line = json.dumps({"at": time.time(), "pid": os.getpid(), "what": message, "stack": stack})
        with open(report, "a", encoding="utf-8") as out:
            out.write(line + "\n")
    if os.environ.get("PODIUM_STRICT_GUARDS") == "1":
        raise NetworkCallInTransaction(message)

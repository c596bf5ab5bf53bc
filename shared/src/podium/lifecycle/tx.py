"""The one way the lifecycle opens a write: a short transaction that may write run, call and
thread state (``podium.store.guards``), whose staged messages the outbox publishes once it
committed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from podium.runtime import Runtime, Tx
from podium.store.guards import owner_writes


@contextmanager
def owned_transaction(runtime: Runtime, tenant_id: str | None = None) -> Iterator[Tx]:
    with owner_writes(), runtime.transaction(tenant_id) as tx:
        yield tx

"""Batches of messages for a consumer whose work is cheaper per batch than per message.

Each Celery task thread hands its message to the batcher and waits; one thread per process
takes what has gathered (up to ``max_items``, waiting at most ``wait_s`` after the first) and
handles it at once. A task returns, and its message is acknowledged, only once its batch
committed, so acks_late keeps its meaning: a process killed mid-batch leaves every message of
the batch to be redelivered.

A batch that fails is handled again one message at a time, so one message that cannot be
applied fails alone (and is retried, then dead-lettered, by the consumer's policy) instead of
taking its neighbours with it. An outage fails the whole batch at once: every message is
retried later anyway.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from podium.consumers import is_outage

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Slot(Generic[T, R]):
    item: T
    done: threading.Event = field(default_factory=threading.Event)
    result: R | None = None
    error: BaseException | None = None


class Batcher(Generic[T, R]):
    def __init__(
        self,
        handle: Callable[[Sequence[T]], list[R]],
        *,
        max_items: int,
        wait_s: float,
        name: str,
    ) -> None:
        """``handle(items)`` returns one result per item, in order."""
        self._handle = handle
        self.max_items = max(1, max_items)
        self.wait_s = max(0.0, wait_s)
        self._name = name
        self._pending: list[_Slot[T, R]] = []
        self._cond = threading.Condition()
        self._thread_pid: int | None = None

    def submit(self, item: T) -> R:
        """Handle ``item`` in the next batch; its result, or its batch's error."""
        slot: _Slot[T, R] = _Slot(item)
        with self._cond:
            self._pending.append(slot)
            self._ensure_thread()
            self._cond.notify_all()
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _ensure_thread(self) -> None:
        # One per process: a forked child starts its own.
        if self._thread_pid == os.getpid():
            return
        self._thread_pid = os.getpid()
        threading.Thread(target=self._loop, name=self._name, daemon=True).start()

    def _take(self) -> list[_Slot[T, R]]:
        with self._cond:
            while not self._pending:
                self._cond.wait()
            until = time.monotonic() + self.wait_s
            while len(self._pending) < self.max_items:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch = self._pending[: self.max_items]
            del self._pending[: self.max_items]
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            try:
                self._run(batch)
            except BaseException as exc:  # never leave a waiting task hanging
                for slot in batch:
                    if not slot.done.is_set():
                        slot.error = exc
                        slot.done.set()

    def _run(self, batch: list[_Slot[T, R]]) -> None:
        try:
            results = self._handle([s.item for s in batch])
        except Exception as exc:
            if len(batch) == 1 or is_outage(exc):
                for slot in batch:
                    slot.error = exc
                    slot.done.set()
                return
            log.warning("%s: a batch of %d failed (%s); one at a time", self._name, len(batch), exc)
            for slot in batch:
                self._run([slot])
            return
        for slot, result in zip(batch, results, strict=True):
            slot.result = result
            slot.done.set()

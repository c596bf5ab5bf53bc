"""The learner's batcher: messages held by many consumer threads are handled together, each
thread gets its own result, and one message that fails does not fail its neighbours."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from podium_learner.batching import Batcher


def _submit_all(batcher: Batcher[int, int], items: list[int]) -> dict[int, int | Exception]:
    results: dict[int, int | Exception] = {}
    lock = threading.Lock()

    def one(item: int) -> None:
        try:
            value: int | Exception = batcher.submit(item)
        except Exception as exc:
            value = exc
        with lock:
            results[item] = value

    threads = [threading.Thread(target=one, args=(i,)) for i in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_items_held_at_once_are_handled_in_one_batch() -> None:
    batches: list[list[int]] = []

    def handle(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(handle, max_items=8, wait_s=0.5, name="test")
    results = _submit_all(batcher, list(range(8)))
    assert results == {i: i * 10 for i in range(8)}
    # Eight items within the wait: one batch, handed over as soon as it was full.
    assert [sorted(b) for b in batches] == [list(range(8))]


def test_a_batch_never_exceeds_its_size() -> None:
    sizes: list[int] = []

    def handle(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        return list(items)

    batcher: Batcher[int, int] = Batcher(handle, max_items=3, wait_s=0.2, name="test")
    results = _submit_all(batcher, list(range(7)))
    assert results == {i: i for i in range(7)}
    assert sum(sizes) == 7 and max(sizes) <= 3


def test_a_failing_item_fails_alone() -> None:
    def handle(items: Sequence[int]) -> list[int]:
        if 3 in items:
            raise ValueError("item 3 is poison")
        return [i + 1 for i in items]

    batcher: Batcher[int, int] = Batcher(handle, max_items=6, wait_s=0.3, name="test")
    results = _submit_all(batcher, list(range(6)))
    assert isinstance(results.pop(3), ValueError)
    assert results == {i: i + 1 for i in (0, 1, 2, 4, 5)}


def test_an_outage_fails_the_whole_batch_at_once() -> None:
    calls: list[int] = []

    def handle(items: Sequence[int]) -> list[int]:
        calls.append(len(items))
        raise ConnectionError("the store is down")

    batcher: Batcher[int, int] = Batcher(handle, max_items=4, wait_s=0.3, name="test")
    results = _submit_all(batcher, list(range(4)))
    assert all(isinstance(v, ConnectionError) for v in results.values())
    assert calls == [4]  # not retried one by one: every message is retried later anyway


def test_a_lone_item_waits_at_most_the_window() -> None:
    batcher: Batcher[int, int] = Batcher(list, max_items=50, wait_s=0.05, name="t")
    done = threading.Event()
    threading.Thread(target=lambda: (batcher.submit(1), done.set())).start()
    assert done.wait(5)


@pytest.mark.parametrize("wait_s", [0.0, 0.01])
def test_no_wait_hands_items_over_at_once(wait_s: float) -> None:
    batcher: Batcher[int, int] = Batcher(list, max_items=4, wait_s=wait_s, name="t")
    assert batcher.submit(7) == 7

"""The fair dispatcher (podium.fair_dispatch): the same behaviour from both backends, the
Redis one on the machine's Redis under a fresh key prefix per test."""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator

import pytest
import redis

from podium.fair_dispatch import (
    PICK_LIMIT,
    FairDispatcher,
    MemoryFairDispatcher,
    RedisFairDispatcher,
    make_fair_dispatcher,
)
from podium.settings import Settings

REDIS_URL = os.environ.get("PODIUM_TEST_REDIS", "redis://127.0.0.1:6379/0")
POOL = "default"

Factory = Callable[[int], FairDispatcher]


def _redis_up() -> bool:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.exceptions.RedisError:
        return False


REDIS_UP = _redis_up()


@pytest.fixture(params=["memory", "redis"])
def new(request: pytest.FixtureRequest) -> Iterator[Factory]:
    """Makes dispatchers over one shared state: one instance in memory, many on Redis."""
    made: list[FairDispatcher] = []
    if request.param == "memory":
        shared: dict[int, FairDispatcher] = {}

        def memory(window: int) -> FairDispatcher:
            return shared.setdefault(window, MemoryFairDispatcher(window))

        yield memory
        return
    if not REDIS_UP:
        pytest.skip(f"Redis unreachable at {REDIS_URL}")
    prefix = f"test-{uuid.uuid4().hex}:"

    def remote(window: int) -> FairDispatcher:
        made.append(RedisFairDispatcher(REDIS_URL, prefix, window, max_connections=4))
        return made[-1]

    yield remote
    for d in made:
        d.close()
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def drain(
    d: FairDispatcher, running: list[str], check: Callable[[], None] = lambda: None
) -> list[str]:
    """Complete in-flight items oldest first until nothing runs; the dispatch order."""
    order: list[str] = []
    inflight = deque(running)
    while inflight:
        released = d.complete(POOL, inflight.popleft())
        order += released
        inflight += released
        check()
    return order


def tenant(item: str) -> str:
    return item.split("-", maxsplit=1)[0]


def test_work_conserving_up_to_the_window(new: Factory) -> None:
    d = new(3)
    assert d.submit(POOL, "a", "a-1", tenant_cap=0) == ["a-1"]
    assert d.submit(POOL, "b", "b-1", tenant_cap=0) == ["b-1"]
    assert d.submit(POOL, "a", "a-2", tenant_cap=0) == ["a-2"]
    assert d.submit(POOL, "c", "c-1", tenant_cap=0) == [], "the window is full"
    assert d.submit(POOL, "c", "c-2", tenant_cap=0) == []
    assert d.state(POOL, ["a-1", "c-1", "zz"]) == {
        "a-1": "inflight",
        "c-1": "queued",
        "zz": "unknown",
    }
    snap = d.snapshot(POOL)
    assert (snap["window"], snap["inflight"]) == (3, 3)
    assert snap["tenants"]["c"] == {"queued": 2, "inflight": 0, "cap": 0, "weight": 1}
    assert d.complete(POOL, "b-1") == ["c-1"], "a freed slot goes to the next item at once"
    assert d.state(POOL, ["b-1", "c-1"]) == {"b-1": "unknown", "c-1": "inflight"}
    assert d.pick(POOL) == []


def test_round_robin_one_item_per_tenant_per_turn(new: Factory) -> None:
    d = new(1)
    for t in "abc":
        for n in range(3):
            d.submit(POOL, t, f"{t}-{n}", tenant_cap=0)
    order = drain(d, ["a-0"])
    # a joined the ring first (with a-1), then b and c; each visit sends one item.
    assert order == ["a-1", "b-0", "c-0", "a-2", "b-1", "c-1", "b-2", "c-2"]
    assert d.snapshot(POOL) == {"window": 1, "inflight": 0, "tenants": {}}, "nothing is left"


def test_the_tenant_cap_holds_and_others_fill_the_window(new: Factory) -> None:
    d = new(10)
    released = [x for n in range(5) for x in d.submit(POOL, "a", f"a-{n}", tenant_cap=2)]
    assert released == ["a-0", "a-1"]
    released = [x for n in range(3) for x in d.submit(POOL, "b", f"b-{n}", tenant_cap=0)]
    assert released == ["b-0", "b-1", "b-2"]
    snap = d.snapshot(POOL)
    assert snap["inflight"] == 5
    assert snap["tenants"]["a"] == {"queued": 3, "inflight": 2, "cap": 2, "weight": 1}
    assert d.complete(POOL, "b-0") == [], "a is at its cap, b has nothing queued"
    assert d.complete(POOL, "a-0") == ["a-2"]
    # The latest cap is stored and used at once: raising it releases queued items.
    assert d.submit(POOL, "a", "a-5", tenant_cap=4) == ["a-3", "a-4"]
    assert d.snapshot(POOL)["tenants"]["a"] == {"queued": 1, "inflight": 4, "cap": 4, "weight": 1}


def test_a_noisy_tenant_does_not_hold_back_quiet_ones(new: Factory) -> None:
    d = new(4)
    quiet = [f"q{i}" for i in range(4)]
    running = [x for n in range(100) for x in d.submit(POOL, "noisy", f"noisy-{n}", tenant_cap=2)]
    for t in quiet:
        running += [x for n in range(5) for x in d.submit(POOL, t, f"{t}-{n}", tenant_cap=0)]
    assert running == ["noisy-0", "noisy-1", "q0-0", "q0-1"], "work conserving"

    def check() -> None:
        snap = d.snapshot(POOL)
        assert snap["inflight"] <= 4
        assert snap["tenants"].get("noisy", {"inflight": 0})["inflight"] <= 2

    order = running + drain(d, running, check)
    assert sorted(order) == sorted(
        [f"noisy-{n}" for n in range(100)] + [f"{t}-{n}" for t in quiet for n in range(5)]
    )
    for t in ["noisy", *quiet]:
        mine = [x for x in order if tenant(x) == t]
        assert mine == sorted(mine, key=lambda x: int(x.split("-")[1])), "FIFO per tenant"
    # Between two items of a quiet tenant every other tenant gets at most one: a rotation.
    for t in quiet:
        at = [i for i, x in enumerate(order) if tenant(x) == t]
        assert max(b - a for a, b in itertools.pairwise(at)) <= 5, (t, order[:40])
    # All quiet items go out while the noisy backlog is still there.
    last_quiet = max(i for i, x in enumerate(order) if tenant(x) != "noisy")
    assert last_quiet < 40


def test_a_freed_slot_goes_to_the_tenant_holding_the_fewest(new: Factory) -> None:
    d = new(4)
    running = [x for n in range(10) for x in d.submit(POOL, "noisy", f"noisy-{n}", tenant_cap=3)]
    assert running == ["noisy-0", "noisy-1", "noisy-2"]
    assert d.submit(POOL, "q", "q-0", tenant_cap=0) == ["q-0"], "the window is now full"
    assert d.submit(POOL, "q", "q-1", tenant_cap=0) == []
    assert d.submit(POOL, "q", "q-2", tenant_cap=0) == []
    # noisy is below its cap and ahead in the ring, but holds 2 slots against q's 1.
    assert d.complete(POOL, "noisy-0") == ["q-1"]
    assert d.complete(POOL, "noisy-1") == ["noisy-3"], "now noisy holds fewer (1 against 2)"
    assert d.complete(POOL, "q-0") == ["q-2"], "1 against 2 again, the other way"
    assert d.complete(POOL, "q-1") == ["noisy-4"], "q has nothing queued: work conserving"


def test_weights_share_the_dispatches(new: Factory) -> None:
    d = new(3)
    running: list[str] = []
    for n in range(90):
        running += d.submit(POOL, "heavy", f"heavy-{n}", tenant_cap=0, weight=2)
        running += d.submit(POOL, "light", f"light-{n}", tenant_cap=0)
    assert d.snapshot(POOL)["tenants"]["heavy"]["weight"] == 2
    order = drain(d, running)
    counts = Counter(tenant(x) for x in order[:90])
    assert 58 <= counts["heavy"] <= 62, counts
    assert 28 <= counts["light"] <= 32, counts


def test_submit_and_complete_are_idempotent(new: Factory) -> None:
    d = new(1)
    assert d.submit(POOL, "a", "a-1", tenant_cap=0) == ["a-1"]
    assert d.submit(POOL, "a", "a-1", tenant_cap=0) == [], "already in flight"
    assert d.submit(POOL, "b", "b-1", tenant_cap=0) == []
    assert d.submit(POOL, "b", "b-1", tenant_cap=0) == [], "already queued"
    assert d.submit(POOL, "b", "b-2", tenant_cap=0) == []
    assert d.snapshot(POOL)["tenants"]["b"]["queued"] == 2
    assert d.complete(POOL, "a-1") == ["b-1"]
    assert d.complete(POOL, "a-1") == [], "a second complete frees nothing"
    assert d.complete(POOL, "never-seen") == []
    assert d.state(POOL, ["b-1", "b-2"]) == {"b-1": "inflight", "b-2": "queued"}
    assert d.snapshot(POOL)["inflight"] == 1


def test_complete_of_a_queued_item_removes_it(new: Factory) -> None:
    d = new(1)
    d.submit(POOL, "a", "a-1", tenant_cap=0)
    d.submit(POOL, "b", "b-1", tenant_cap=0)
    d.submit(POOL, "c", "c-1", tenant_cap=0)
    d.submit(POOL, "c", "c-2", tenant_cap=0)
    assert d.complete(POOL, "b-1") == [], "cancelled while queued: no slot was taken"
    assert d.complete(POOL, "c-1") == []
    assert d.state(POOL, ["b-1", "c-1", "c-2"]) == {
        "b-1": "unknown",
        "c-1": "unknown",
        "c-2": "queued",
    }
    assert "b" not in d.snapshot(POOL)["tenants"], "b left the ring"
    assert d.complete(POOL, "a-1") == ["c-2"]
    # An item cancelled and later resubmitted (the reaper, after lost state) queues again.
    assert d.submit(POOL, "b", "b-1", tenant_cap=0) == []
    assert d.complete(POOL, "c-2") == ["b-1"]


def test_inflight_since_is_the_pick_time(new: Factory) -> None:
    d = new(1)
    before = time.time()
    d.submit(POOL, "a", "a-1", tenant_cap=0)
    d.submit(POOL, "a", "a-2", tenant_cap=0)
    since = d.inflight_since(POOL, "a-1")
    assert since is not None
    assert before - 1 <= since <= time.time() + 1
    assert d.inflight_since(POOL, "a-2") is None, "queued, not in flight"
    assert d.inflight_since(POOL, "zz") is None


def test_workers_set_the_window_until_they_expire(new: Factory) -> None:
    d = new(2)
    running = [x for n in range(8) for x in d.submit(POOL, "a", f"a-{n}", tenant_cap=0)]
    assert running == ["a-0", "a-1"], "no worker yet: the default window"
    assert d.register_worker(POOL, "w1", 4, 5) == ["a-2", "a-3"], "window 4 now"
    assert d.register_worker(POOL, "w2", 1, 0.2) == ["a-4"]
    assert d.snapshot(POOL)["window"] == 5
    assert d.register_worker(POOL, "w1", 4, 5) == [], "renewal changes nothing"
    time.sleep(0.3)
    assert d.snapshot(POOL)["window"] == 4, "w2 expired"
    assert d.complete(POOL, "a-0") == [], "4 in flight fill the shrunken window"
    assert d.complete(POOL, "a-1") == ["a-5"]
    assert d.register_worker(POOL, "w1", 4, 0) == [], "withdrawn: back to the default 2"
    assert d.snapshot(POOL)["window"] == 2
    assert d.register_worker(POOL, "w3", 6, 5) == ["a-6", "a-7"]


def test_one_pick_releases_at_most_the_limit(new: Factory) -> None:
    d = new(1)
    for n in range(PICK_LIMIT + 200):
        d.submit(POOL, f"t{n % 3}", f"t{n % 3}-{n}", tenant_cap=0)
    released = d.register_worker(POOL, "big", 5000, 5)
    assert len(released) == PICK_LIMIT, "bounded work per call"
    assert len(d.pick(POOL)) == 199, "the next pick carries on"
    assert d.snapshot(POOL)["inflight"] == PICK_LIMIT + 200


def test_pools_are_independent(new: Factory) -> None:
    d = new(1)
    assert d.submit("fast", "a", "a-1", tenant_cap=0) == ["a-1"]
    assert d.submit("slow", "a", "a-2", tenant_cap=0) == ["a-2"]
    assert d.state("fast", ["a-2"]) == {"a-2": "unknown"}


def test_bad_arguments_are_refused(new: Factory) -> None:
    d = new(1)
    with pytest.raises(ValueError):
        d.submit(POOL, "a", "a-1", tenant_cap=-1)
    with pytest.raises(ValueError):
        d.submit(POOL, "a", "a-1", tenant_cap=0, weight=0)
    with pytest.raises(ValueError):
        d.register_worker(POOL, "w", -1, 5)
    assert d.state(POOL, ["a-1"]) == {"a-1": "unknown"}


def test_concurrent_dispatchers_never_exceed_window_or_caps(new: Factory) -> None:
    window, cap, tenants = 6, 2, ["t0", "t1", "t2", "t3"]
    lock = threading.Lock()
    running: Counter[str] = Counter()  # per tenant, plus "*" for all
    dispatched: list[str] = []
    errors: list[str] = []

    def took(items: list[str]) -> None:
        with lock:
            dispatched.extend(items)
            for item in items:
                running[tenant(item)] += 1
                running["*"] += 1
            if running["*"] > window or any(running[t] > cap for t in tenants):
                errors.append(f"over the limits: {dict(running)}")

    def worker(k: int) -> None:
        d = new(window)
        rng = random.Random(k)
        held: list[str] = []
        submitted = 0
        while submitted < 40 or held:
            if submitted < 40 and (not held or rng.random() < 0.6):
                t = rng.choice(tenants)
                got = d.submit(POOL, t, f"{t}-{k}-{submitted}", tenant_cap=cap)
                submitted += 1
            else:
                item = held.pop(rng.randrange(len(held)))
                # Count it gone before Redis frees the slot, so the tally never lags.
                with lock:
                    running[tenant(item)] -= 1
                    running["*"] -= 1
                got = d.complete(POOL, item)
            took(got)
            held += got
            snap = d.snapshot(POOL)
            if snap["inflight"] > window or any(
                s["inflight"] > cap for s in snap["tenants"].values()
            ):
                errors.append(f"snapshot over the limits: {snap}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # Items queued when their submitter finished are still queued: drain them here.
    d = new(window)
    rest = d.pick(POOL)
    took(rest)
    while rest:
        item = rest.pop()
        with lock:
            running[tenant(item)] -= 1
            running["*"] -= 1
        got = d.complete(POOL, item)
        took(got)
        rest += got
    assert errors == []
    assert len(dispatched) == len(set(dispatched)) == 8 * 40, "each item exactly once"
    assert d.snapshot(POOL) == {"window": window, "inflight": 0, "tenants": {}}


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_the_factory_picks_the_backend() -> None:
    memory = make_fair_dispatcher(settings(redis_url="memory://"))
    assert isinstance(memory, MemoryFairDispatcher)
    assert isinstance(make_fair_dispatcher(settings(mode="embedded")), MemoryFairDispatcher)
    remote = make_fair_dispatcher(settings(redis_url=REDIS_URL, redis_key_prefix="x:"))
    assert isinstance(remote, RedisFairDispatcher)
    assert remote.key("default") == "x:podium:fair:default:"
    remote.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix on the machine's Redis, its keys removed afterwards."""
    if not REDIS_UP:
        pytest.skip(f"Redis unreachable at {REDIS_URL}")
    prefix = f"test-{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def test_both_backends_make_the_same_choices(redis_prefix: str) -> None:
    """A random mix of submits (changing caps and weights), completions and cancellations of
    queued items: the Lua scripts and the memory backend release the same items in the same
    order at every step."""
    memory = MemoryFairDispatcher(6)
    remote = RedisFairDispatcher(REDIS_URL, redis_prefix, 6, max_connections=2)
    rng = random.Random(11)
    inflight: list[str] = []
    queued: list[str] = []
    try:
        for n in range(800):
            roll = rng.random()
            if roll < 0.5 or not (inflight or queued):
                t = f"t{rng.randrange(9)}"
                cap, weight = rng.choice([0, 1, 2, 3]), rng.choice([1, 1, 2, 3])
                item = f"{t}-{n}"
                got = memory.submit(POOL, t, item, tenant_cap=cap, weight=weight)
                assert remote.submit(POOL, t, item, tenant_cap=cap, weight=weight) == got, n
                queued.append(item)
            elif roll < 0.9 and inflight:
                item = inflight.pop(rng.randrange(len(inflight)))
                got = memory.complete(POOL, item)
                assert remote.complete(POOL, item) == got, n
            else:  # cancelled while it waited (or a slot freed, if nothing waits)
                pool = queued or inflight
                item = pool.pop(rng.randrange(len(pool)))
                got = memory.complete(POOL, item)
                assert remote.complete(POOL, item) == got, n
            for item in got:
                queued.remove(item)
            inflight += got
        assert memory.snapshot(POOL) == remote.snapshot(POOL)
    finally:
        remote.close()


def test_state_from_the_round_robin_version_is_converted(redis_prefix: str) -> None:
    """A deployment upgraded with calls waiting: the old ring list becomes turns, in order,
    and nothing queued is stranded."""
    d = RedisFairDispatcher(REDIS_URL, redis_prefix, 2, max_connections=2)
    base = d.key(POOL)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        # What the old scripts left: b then a in the ring, a holding one slot, both waiting.
        client.hset(f"{base}conf", mapping={"a": "0|1", "b": "0|1"})
        client.rpush(f"{base}q:a", "a-2", "a-3")
        client.rpush(f"{base}q:b", "b-1")
        client.hset(f"{base}member", mapping={"a-2": "a", "a-3": "a", "b-1": "b"})
        client.hset(f"{base}inflight", "a-1", "a|1700000000.000000")
        client.hset(f"{base}tin", "a", 1)
        client.rpush(f"{base}ring", "b", "a")
        client.hset(f"{base}deficit", "b", 1)
        assert d.pick(POOL) == ["b-1"], "b holds nothing"
        assert client.exists(f"{base}ring", f"{base}deficit") == 0
        assert d.complete(POOL, "a-1") == ["a-2"]
        assert d.complete(POOL, "b-1") == ["a-3"]
        assert d.snapshot(POOL)["tenants"] == {
            "a": {"queued": 0, "inflight": 2, "cap": 0, "weight": 1}
        }
    finally:
        client.close()
        d.close()

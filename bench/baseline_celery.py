"""The bare Celery baseline: the same broker, the same Celery settings as Podium's services
(JSON, acks_late, prefetch 1, threads pool), and no Podium code at all.

    uv run --frozen python -m bench.baseline_celery [--broker redis|rabbitmq] [--quick]

Measures, for one broker:

- **no-op drain rate**: K no-op tasks are enqueued first, then one worker (threads pool,
  Podium's default concurrency) drains them; rate = K / (last task end - first task start);
- **round trip**: one task in flight at a time; the client publishes it and waits for the
  task's reply on a Redis list (RPUSH/BLPOP); also the one-way latency (task start - publish);
- **in-flight** (scenario b's baseline): rounds x c tasks of ``time.sleep(latency)`` drained by
  one worker with c slots (threads or gevent), efficiency as in ``harness.inflight_efficiency``.

The worker is this module run as ``python -m bench.baseline_celery worker ...``; with
``--pool gevent`` it monkey-patches first, as Celery's own ``celery`` command does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from bench import harness
from bench.harness import BASELINE_REDIS_URL, RABBITMQ_URL, BenchSession, log

PODIUM_DEFAULT_CONCURRENCY = 64


def bare_app(name: str, broker_url: str, prefix: str, concurrency: int) -> Any:
    """A Celery app with no Podium code and Podium's reliability settings."""
    from celery import Celery

    app = Celery(name, broker=broker_url, set_as_current=False)
    transport: dict[str, Any] = {}
    if broker_url.startswith("redis"):
        transport = {
            "visibility_timeout": 1200,
            "global_keyprefix": prefix,
            "max_connections": max(concurrency, 16) * 2 + 20,
        }
    # The same reliability settings as podium.celery_app.make_celery.
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_create_missing_queues=True,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_pool_limit=max(concurrency, 10),
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def make_app(broker_url: str, prefix: str, concurrency: int) -> Any:
    app = bare_app("bare", broker_url, prefix, concurrency)
    state: dict[str, Any] = {"done": [], "lock": threading.Lock(), "redis": None}

    def reply_client() -> redis.Redis:
        if state["redis"] is None:
            state["redis"] = redis.Redis.from_url(BASELINE_REDIS_URL)
        client: redis.Redis = state["redis"]
        return client

    @app.task(name="bench.work")
    def work(sleep_s: float, expected: int, report_key: str) -> None:
        started = time.time()
        if sleep_s:
            time.sleep(sleep_s)
        ended = time.time()
        with state["lock"]:
            state["done"].append((started, ended))
            finished = len(state["done"]) == expected
            report = list(state["done"]) if finished else None
        if report is not None:
            reply_client().rpush(report_key, json.dumps(report))

    @app.task(name="bench.count")
    def count(expected: int, counter_key: str, report_key: str) -> None:
        # Several workers: a shared counter tells which task finished the drain.
        if reply_client().incr(counter_key) == expected:
            reply_client().rpush(report_key, json.dumps(time.time()))

    @app.task(name="bench.echo")
    def echo(published: float, reply_key: str) -> None:
        reply_client().rpush(reply_key, json.dumps([published, time.time()]))

    return app


def _worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--concurrency", type=int, default=PODIUM_DEFAULT_CONCURRENCY)
    args = parser.parse_args(argv)
    if args.pool == "gevent":
        from gevent import monkey

        monkey.patch_all()
    app = make_app(args.broker, args.prefix, args.concurrency)
    app.worker_main(
        [
            "worker",
            "--queues",
            args.queue,
            "--pool",
            args.pool,
            "--concurrency",
            str(args.concurrency),
            "--hostname",
            f"bare-{os.getpid()}@%h",
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


class Baseline:
    """One broker's bare Celery measurements, within a ``BenchSession``."""

    def __init__(self, session: BenchSession, broker: str) -> None:
        self.session = session
        self.broker = broker
        self.broker_url = harness.REDIS_URL if broker == "redis" else RABBITMQ_URL
        self.prefix = session.new_prefix(harness.REDIS_URL)
        session.redis_prefixes.append((BASELINE_REDIS_URL, self.prefix))
        self.reply = redis.Redis.from_url(BASELINE_REDIS_URL)
        self._n = 0

    def _queue(self) -> str:
        self._n += 1
        name = f"bench-bare-{self.session.hex}-{self._n}"
        if self.broker == "rabbitmq":
            self.session.rabbit_queues.add(name)
        return name

    def _start_worker(
        self, queue: str, pool: str, concurrency: int, env: dict[str, str] | None = None
    ) -> harness.Service:
        argv = [
            sys.executable,
            "-m",
            "bench.baseline_celery",
            "worker",
            "--broker",
            self.broker_url,
            "--prefix",
            self.prefix,
            "--queue",
            queue,
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
        ]
        return self.session.spawn(f"bare-{queue}", argv, env or harness.base_env())

    def _publish(self, app: Any, queue: str, n: int, sleep_s: float, report_key: str) -> None:
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                app.send_task(
                    "bench.work", args=[sleep_s, n, report_key], queue=queue, producer=producer
                )

    def _wait_report(self, key: str, svc: harness.Service, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self.reply.blpop([key], timeout=1)
            if item is not None:
                return list(json.loads(item[1]))
            if not svc.alive():
                raise RuntimeError(f"bare worker died:\n{svc.log_tail()}")
        raise RuntimeError(f"bare worker: no report after {timeout:.0f}s:\n{svc.log_tail()}")

    def drain(
        self, n: int, concurrency: int = PODIUM_DEFAULT_CONCURRENCY, counters: Path | None = None
    ) -> dict[str, Any]:
        """No-op drain rate: n tasks enqueued, then drained by one fresh worker. With
        ``counters``, publisher and worker run with bench/hooks/sitecustomize.py and the
        Redis commands per task are reported too."""
        queue = self._queue()
        app = make_app(self.broker_url, self.prefix, concurrency)
        key = f"{self.prefix}report-{queue}"
        env = harness.base_env()
        if counters is not None:
            env["BENCH_COUNTERS_DIR"] = str(counters)
            env["PYTHONPATH"] = harness.podium_pythonpath([str(harness.HOOKS_DIR)])
        t = time.perf_counter()
        if counters is None:
            self._publish(app, queue, n, 0.0, key)
        else:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.baseline_celery",
                    "publish",
                    self.broker_url,
                    self.prefix,
                    queue,
                    str(n),
                    key,
                ],
                env=env,
                check=True,
                timeout=300,
            )
        publish_s = time.perf_counter() - t
        svc = self._start_worker(queue, "threads", concurrency, env)
        sampler = harness.Sampler({"worker": svc})
        try:
            intervals = self._wait_report(key, svc, timeout=120 + n / 100)
        finally:
            usage = sampler.stop()
            harness.stop_process(svc.popen)
        first = min(s for s, _ in intervals)
        last = max(e for _, e in intervals)
        figures: dict[str, Any] = {
            "tasks": n,
            "concurrency": concurrency,
            "elapsed_s": round(last - first, 3),
            "drain_per_s": round(n / (last - first), 1),
            # One client thread publishing back to back (kombu producer).
            "publish_per_s": round(n / publish_s, 1),
            "worker": usage["worker"],
        }
        if counters is not None:
            commands: dict[str, int] = {}
            trips = 0
            for path in counters.glob("*.json"):
                data = json.loads(path.read_text())
                for name, count in data["redis"].items():
                    commands[name] = commands.get(name, 0) + int(count)
                trips += int(data["redis_round_trips"])
            figures["redis_per_task"] = round(sum(commands.values()) / n, 2)
            figures["round_trips_per_task"] = round(trips / n, 2)
            figures["redis_by_command_per_task"] = {
                k: round(v / n, 2) for k, v in sorted(commands.items(), key=lambda kv: -kv[1])
            }
        return figures

    def scaled_drain(
        self, workers: int, n: int, concurrency: int = PODIUM_DEFAULT_CONCURRENCY
    ) -> dict[str, Any]:
        """n no-op tasks drained by ``workers`` worker processes started beforehand: the
        queue is moved aside (RENAME) while they start, then put back; rate = n / (time the
        last task ended - time the queue was put back). Redis only."""
        if self.broker != "redis":
            raise RuntimeError("scaled_drain needs the Redis broker")
        queue = self._queue()
        app = make_app(self.broker_url, self.prefix, concurrency)
        counter, report = f"{self.prefix}count-{queue}", f"{self.prefix}report-{queue}"
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                app.send_task(
                    "bench.count", args=[n, counter, report], queue=queue, producer=producer
                )
        broker = redis.Redis.from_url(self.broker_url)
        live, aside = f"{self.prefix}{queue}", f"{self.prefix}{queue}.aside"
        broker.rename(live, aside)
        procs = [self._start_worker(queue, "threads", concurrency) for _ in range(workers)]
        try:
            time.sleep(3.0 + 0.75 * workers)  # every worker is up and polling its queue
            for svc in procs:
                if not svc.alive():
                    raise RuntimeError(f"bare worker died:\n{svc.log_tail()}")
            sampler = harness.Sampler({f"worker-{i}": s for i, s in enumerate(procs)})
            released = time.time()
            broker.rename(aside, live)
            item = self.reply.blpop([report], timeout=120 + n / 100)
            usage = sampler.stop()
            if item is None:
                raise RuntimeError(f"bare drain with {workers} workers did not finish")
            done = float(json.loads(item[1]))
        finally:
            for svc in procs:
                harness.stop_process(svc.popen)
            broker.close()
        return {
            "workers": workers,
            "tasks": n,
            "elapsed_s": round(done - released, 3),
            "drain_per_s": round(n / (done - released), 1),
            "processes": usage,
        }

    def round_trip(self, n: int, warmup: int = 20) -> dict[str, Any]:
        """Sequential round trips (one in flight) through a fresh worker."""
        queue = self._queue()
        app = make_app(self.broker_url, self.prefix, PODIUM_DEFAULT_CONCURRENCY)
        key = f"{self.prefix}reply-{queue}"
        svc = self._start_worker(queue, "threads", PODIUM_DEFAULT_CONCURRENCY)
        rtts: list[float] = []
        one_way: list[float] = []
        try:
            with app.producer_or_acquire() as producer:
                for i in range(warmup + n):
                    published = time.time()
                    app.send_task(
                        "bench.echo", args=[published, key], queue=queue, producer=producer
                    )
                    item = self.reply.blpop([key], timeout=60 if i == 0 else 10)
                    received = time.time()
                    if item is None:
                        raise RuntimeError(f"bare echo lost:\n{svc.log_tail()}")
                    if i >= warmup:
                        pub, started = json.loads(item[1])
                        rtts.append(received - pub)
                        one_way.append(started - pub)
        finally:
            harness.stop_process(svc.popen)
        return {"round_trip": harness.summary_ms(rtts), "one_way": harness.summary_ms(one_way)}

    def inflight(
        self, pool: str, concurrency: int, latency_s: float, rounds: int
    ) -> dict[str, Any]:
        """rounds x c sleeps of latency_s drained by one worker with c slots."""
        queue = self._queue()
        n = rounds * concurrency
        app = make_app(self.broker_url, self.prefix, concurrency)
        key = f"{self.prefix}report-{queue}"
        self._publish(app, queue, n, latency_s, key)
        svc = self._start_worker(queue, pool, concurrency)
        sampler = harness.Sampler({"worker": svc})
        try:
            intervals = self._wait_report(key, svc, timeout=120 + rounds * latency_s * 5)
        finally:
            usage = sampler.stop()
            harness.stop_process(svc.popen)
        figures: dict[str, Any] = dict(
            harness.inflight_efficiency([(s, e) for s, e in intervals], concurrency, latency_s)
        )
        figures["peak_rss_mb"] = usage["worker"]["peak_rss_mb"]
        figures["cpu_cores"] = usage["worker"]["cpu_cores"]
        return figures

    def close(self) -> None:
        self.reply.close()


def measure(session: BenchSession, broker: str, quick: bool) -> dict[str, Any]:
    """Drain rate and round trip of one broker, as scenario (a) and the others use them."""
    base = Baseline(session, broker)
    try:
        log(f"bare Celery on {broker}: no-op drain")
        drain = base.drain(2000 if quick else 10000)
        log(f"bare Celery on {broker}: {drain['drain_per_s']:.0f} tasks/s; round trips")
        rtt = base.round_trip(300 if quick else 1000)
        log(
            f"bare Celery on {broker}: round trip p50 {rtt['round_trip']['p50_ms']:.2f} ms, "
            f"p99 {rtt['round_trip']['p99_ms']:.2f} ms"
        )
        return {"broker": broker, "drain": drain, **rtt}
    finally:
        base.close()


def _publish_main(argv: list[str]) -> None:
    broker, prefix, queue, n, key = argv
    app = make_app(broker, prefix, PODIUM_DEFAULT_CONCURRENCY)
    with app.producer_or_acquire() as producer:
        for _ in range(int(n)):
            app.send_task("bench.work", args=[0.0, int(n), key], queue=queue, producer=producer)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        _worker_main(sys.argv[2:])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        _publish_main(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description="bare Celery baseline")
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with BenchSession() as session:
        print(json.dumps(measure(session, args.broker, args.quick), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""(d) Cost model: Redis commands and SQL statements per ``direct`` run, counted.

    uv run --frozen python -m bench.scenario_cost [--full]

Run this scenario alone on the machine: Redis ``INFO commandstats`` is server-wide.

Three independent counts, each as (load window - idle window scaled to the same length) / N:

- **per process, by command and by statement** (the reference figures): every Podium process
  runs with ``bench/hooks/sitecustomize.py`` on its PYTHONPATH, which counts the Redis
  commands redis-py sends (kombu's included) and the SQL statements SQLAlchemy executes,
  with transactions, and writes them to a file (nothing in Podium changes);
- **Redis server**: ``INFO commandstats`` deltas (server-wide: other clients of the same
  Redis show up here, which is why the per-process counts are the reference);
- **PostgreSQL server**: ``pg_stat_database`` of the bench database (transactions, rows
  returned/fetched/inserted/updated/deleted); ``pg_stat_statements`` is used instead when
  the server has it loaded (it needs ``shared_preload_libraries``, so usually not).

The same per-process counts for the embedded mode (``podium dev``, SQLite), and the bare
Celery baseline: Redis commands per task of a no-op drain (publisher and worker counted
the same way), so Podium's Redis cost can be read as "x bare Celery per message".
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine, text

from bench import harness
from bench.baselines import Baselines
from bench.harness import (
    HOOKS_DIR,
    PG_SERVER,
    REDIS_URL,
    BenchSession,
    EmbeddedStack,
    Mode,
    PodiumStack,
    log,
    ratio,
)

NAME = "cost"
TITLE = "(d) Cost model: Redis commands and SQL statements per run"
# Celery messages of one direct run when none were counted: advance (start), execute the
# call, run.completed to the learner (the call's commit ends a direct run).
MESSAGES_PER_RUN = 3
TARGET_STATEMENTS = 30
TARGET_TRANSACTIONS = 8
TARGET_MESSAGES = 3
CONCURRENCY = 8


def hook_env(directory: Path) -> dict[str, str]:
    return {
        "BENCH_COUNTERS_DIR": str(directory),
        "PYTHONPATH": harness.podium_pythonpath([str(HOOKS_DIR)]),
    }


def _empty() -> dict[str, Any]:
    """One process's counters, all zero."""
    return {
        "sql": Counter(),
        "transactions": Counter(),
        "redis": Counter(),
        "messages": Counter(),
        "round_trips": 0,
        "cpu_ms": 0.0,
    }


def read_counters(directory: Path) -> dict[str, dict[str, Any]]:
    """{service: counters} summed over the service's processes."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        entry = out.setdefault(data["service"], _empty())
        entry["sql"].update(data["sql"])
        entry["transactions"].update(data["transactions"])
        entry["redis"].update(data["redis"])
        entry["round_trips"] += data["redis_round_trips"]
        entry["messages"].update(data.get("messages", {}))
        entry["cpu_ms"] += float(data.get("cpu_s", 0.0)) * 1000
    return out


def commandstats(client: redis.Redis) -> Counter[str]:
    stats = client.info("commandstats")
    return Counter(
        {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if "calls" in v}
    )


PG_FIELDS = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
)


def pg_stats(database: str) -> Counter[str]:
    engine = create_engine(f"{PG_SERVER}/postgres")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            row = conn.execute(
                text(f"SELECT {', '.join(PG_FIELDS)} FROM pg_stat_database WHERE datname = :d"),
                {"d": database},
            ).one()
        return Counter(dict(zip(PG_FIELDS, (int(v) for v in row), strict=True)))
    finally:
        engine.dispose()


def pg_stat_statements_available() -> bool:
    engine = create_engine(f"{PG_SERVER}/postgres")
    try:
        with engine.connect() as conn:
            libs = str(conn.execute(text("SHOW shared_preload_libraries")).scalar() or "")
        return "pg_stat_statements" in libs
    finally:
        engine.dispose()


class Snapshot:
    def __init__(self, counters: Path, database: str | None, client: redis.Redis | None) -> None:
        self.t = time.monotonic()
        self.hooks = read_counters(counters)
        self.redis = commandstats(client) if client is not None else Counter()
        self.pg = pg_stats(database) if database else Counter()


def _delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    for key in set(after) | set(before):
        out[key] = after.get(key, 0) - before.get(key, 0)
    return out


def per_run(
    idle: tuple[Counter[str], float], load: tuple[Counter[str], float], n: int
) -> dict[str, float]:
    """(load - idle x load_s / idle_s) / n for each key, largest first, zeros dropped."""
    (idle_c, idle_s), (load_c, load_s) = idle, load
    scale = load_s / idle_s if idle_s > 0 else 0.0
    out = {k: (load_c.get(k, 0) - idle_c.get(k, 0) * scale) / n for k in set(idle_c) | set(load_c)}
    return {
        k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.005
    }


def hook_deltas(
    a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Counter[str]]]:
    out: dict[str, dict[str, Counter[str]]] = {}
    for service in set(a) | set(b):
        x, y = a.get(service, _empty()), b.get(service, _empty())
        out[service] = {
            "sql": _delta(y["sql"], x["sql"]),
            "transactions": _delta(y["transactions"], x["transactions"]),
            "redis": _delta(y["redis"], x["redis"]),
            "messages": _delta(y["messages"], x["messages"]),
            "round_trips": Counter({"round_trips": y["round_trips"] - x["round_trips"]}),
            # Counter values are ints elsewhere; CPU is kept in ms, rounded.
            "cpu_ms": Counter({"cpu_ms": round(y["cpu_ms"] - x["cpu_ms"])}),
        }
    return out


def cost_table(
    s0: Snapshot, s1: Snapshot, s2: Snapshot, n: int, with_servers: bool
) -> dict[str, Any]:
    idle_s, load_s = s1.t - s0.t, s2.t - s1.t
    idle, load = hook_deltas(s0.hooks, s1.hooks), hook_deltas(s1.hooks, s2.hooks)
    services: dict[str, Any] = {}
    kinds = ("sql", "transactions", "redis", "messages", "round_trips", "cpu_ms")
    totals: dict[str, float] = dict.fromkeys(kinds, 0.0)
    by_sql: Counter[str] = Counter()
    by_redis: Counter[str] = Counter()
    by_message: Counter[str] = Counter()
    for service in sorted(load):
        entry: dict[str, Any] = {}
        for kind in kinds:
            empty: Counter[str] = Counter()
            table = per_run(
                (idle.get(service, {}).get(kind, empty), idle_s),
                (load[service][kind], load_s),
                n,
            )
            entry[kind] = table
            total = round(sum(table.values()), 2)
            entry[f"{kind}_total"] = total
            totals[kind] += total
        by_sql.update(entry["sql"])
        by_redis.update(entry["redis"])
        by_message.update(entry["messages"])
        services[service] = entry
    result: dict[str, Any] = {
        "per_run_totals": {k: round(v, 1) for k, v in totals.items()},
        "sql_by_statement": {k: round(v, 2) for k, v in by_sql.most_common() if v},
        "redis_by_command": {k: round(v, 2) for k, v in by_redis.most_common() if v},
        "messages_by_task": {k: round(v, 2) for k, v in by_message.most_common() if v},
        "by_service": services,
        "idle_window_s": round(idle_s, 1),
        "load_window_s": round(load_s, 1),
    }
    if with_servers:
        result["redis_commandstats_per_run"] = per_run(
            (_delta(s1.redis, s0.redis), idle_s), (_delta(s2.redis, s1.redis), load_s), n
        )
        result["redis_commandstats_total"] = round(
            sum(result["redis_commandstats_per_run"].values()), 1
        )
        result["pg_stat_database_per_run"] = per_run(
            (_delta(s1.pg, s0.pg), idle_s), (_delta(s2.pg, s1.pg), load_s), n
        )
    return result


def wait_postmortems(stack: PodiumStack, tenant: harness.Tenant, n: int, timeout: float) -> bool:
    return stack.wait_until(
        "post-mortems",
        lambda: (
            int(stack.scalar("SELECT count(*) FROM postmortems WHERE tenant_id = :t", t=tenant.id))
            >= n
        ),
        timeout=timeout,
        interval=0.5,
        watch=tuple(stack.services),
    )


def postgresql(session: BenchSession, n: int, idle_s: float) -> dict[str, Any]:
    counters = session.workdir / "counters-pg"
    stack = PodiumStack(session, label="d-pg", env=hook_env(counters))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        stack.start_all()
        tenant = stack.create_tenant("cost")
        warm = 10
        threads = harness.create_threads(stack.url, tenant.key, n + warm)
        harness.post_runs(stack.url, tenant.key, threads[:warm], concurrency=CONCURRENCY)
        stack.wait_until("warm-up", lambda: stack.count_runs(tenant.id) >= warm, timeout=120)
        wait_postmortems(stack, tenant, warm, 120)
        time.sleep(2)
        database = stack.database_url.rsplit("/", 1)[1]
        log(f"(d) postgresql: idle window {idle_s:g}s")
        s0 = Snapshot(counters, database, client)
        time.sleep(idle_s)
        s1 = Snapshot(counters, database, client)
        log(f"(d) postgresql: {n} direct runs")
        harness.post_runs(stack.url, tenant.key, threads[warm:], concurrency=CONCURRENCY)
        stack.wait_until(
            "runs", lambda: stack.count_runs(tenant.id) >= n + warm, timeout=120 + n / 5
        )
        wait_postmortems(stack, tenant, n + warm, 120)
        time.sleep(2)  # the last counter dumps, and PostgreSQL's statistics flush
        s2 = Snapshot(counters, database, client)
        table = cost_table(s0, s1, s2, n, with_servers=True)
        table["settings"] = stack.settings
        return table
    finally:
        client.close()
        stack.close()


def sqlite(session: BenchSession, n: int, idle_s: float) -> dict[str, Any]:
    counters = session.workdir / "counters-sqlite"
    stack = EmbeddedStack(session, label="d-sqlite", env=hook_env(counters))
    try:
        stack.start()
        tenant = stack.create_tenant("cost")
        warm = 10
        threads = harness.create_threads(stack.url, tenant.key, n + warm)
        harness.post_runs(stack.url, tenant.key, threads[:warm], concurrency=CONCURRENCY)
        deadline = time.monotonic() + 120
        while stack.count_runs(tenant.id) < warm and time.monotonic() < deadline:
            time.sleep(0.25)
        time.sleep(2)
        log(f"(d) sqlite: idle window {idle_s:g}s, then {n} direct runs")
        s0 = Snapshot(counters, None, None)
        time.sleep(idle_s)
        s1 = Snapshot(counters, None, None)
        harness.post_runs(stack.url, tenant.key, threads[warm:], concurrency=CONCURRENCY)
        deadline = time.monotonic() + 120 + n / 5
        while stack.count_runs(tenant.id) < n + warm and time.monotonic() < deadline:
            time.sleep(0.25)
        done = int(
            stack.scalar("SELECT count(*) FROM postmortems WHERE tenant_id = :t", t=tenant.id)
        )
        while done < n + warm and time.monotonic() < deadline:
            time.sleep(0.25)
            done = int(
                stack.scalar("SELECT count(*) FROM postmortems WHERE tenant_id = :t", t=tenant.id)
            )
        time.sleep(1.5)
        s2 = Snapshot(counters, None, None)
        table = cost_table(s0, s1, s2, n, with_servers=False)
        table["settings"] = stack.settings
        return table
    finally:
        stack.close()


def bare_cost(session: BenchSession, n: int) -> dict[str, Any]:
    """Redis commands per message of bare Celery (publisher and worker), counted by the same
    hook as Podium's processes."""
    from bench import baseline_celery

    base = baseline_celery.Baseline(session, "redis")
    try:
        return base.drain(n, counters=session.workdir / "counters-bare")
    finally:
        base.close()


def run(session: BenchSession, mode: Mode, baselines: Baselines) -> dict[str, Any]:
    started = time.monotonic()
    n = mode.pick(100, 400)
    idle_s = mode.pick(5.0, 20.0)
    notes = [
        "Redis INFO commandstats is server-wide: other clients of the same Redis during the "
        "run inflate it; the per-process counts (hook) are the reference.",
    ]
    if pg_stat_statements_available():
        notes.append("pg_stat_statements is loaded but this bench reads pg_stat_database")
    else:
        notes.append(
            "pg_stat_statements is not loaded (shared_preload_libraries): SQL statements are "
            "counted in-process (SQLAlchemy events); pg_stat_database gives the server's view "
            "(its statistics reach the view up to a few seconds late: approximate)."
        )
    bare = bare_cost(session, mode.pick(2000, 5000))
    log(f"(d) bare Celery: {bare['redis_per_task']} Redis commands per task")
    pg = postgresql(session, n, idle_s)
    lite = sqlite(session, n, idle_s)
    totals = pg["per_run_totals"]
    podium_redis = totals["redis"]
    messages = totals["messages"] or MESSAGES_PER_RUN
    ratios = {
        "redis_commands_per_run_vs_bare_x_messages": ratio(
            podium_redis, bare["redis_per_task"] * messages
        ),
        "redis_round_trips_per_run_vs_bare_x_messages": ratio(
            totals["round_trips"], bare["round_trips_per_task"] * messages
        ),
    }
    targets = [
        harness.target(
            "SQL statements per direct run, all processes (postgresql)",
            totals["sql"],
            "<=",
            TARGET_STATEMENTS,
        ),
        harness.target(
            "transactions per direct run, all processes (postgresql)",
            totals["transactions"],
            "<=",
            TARGET_TRANSACTIONS,
        ),
        harness.target("broker messages per direct run", totals["messages"], "<=", TARGET_MESSAGES),
    ]
    log(
        f"(d) per run: {podium_redis} Redis commands, "
        f"{pg['per_run_totals']['sql']} SQL statements, "
        f"{pg['per_run_totals']['transactions']} transactions, "
        f"{pg['per_run_totals']['messages']} broker messages (postgresql); "
        f"{lite['per_run_totals']['sql']} SQL statements (sqlite)"
    )
    return harness.scenario_result(
        NAME,
        TITLE,
        settings={
            "runs": n,
            "idle_window_s": idle_s,
            "client_concurrency": CONCURRENCY,
            "pattern": "direct",
            "messages_per_run": MESSAGES_PER_RUN,
            "simulated_latency_ms": 0,
        },
        baseline={"bare_celery_redis": bare},
        figures={"postgresql": pg, "sqlite": lite},
        ratios=ratios,
        targets=targets,
        notes=notes,
        started=started,
    )


def main() -> int:
    from bench.run import emit

    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--full", action="store_true")
    parser.add_argument(
        "--output", type=Path, help="write the result there instead of bench/results/latest.json"
    )
    args = parser.parse_args()
    mode = Mode(full=args.full)
    with BenchSession() as session:
        result = run(session, mode, Baselines(session, mode))
    emit([result], mode, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

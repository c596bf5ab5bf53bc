"""Where each process spends its CPU on `direct` runs: py-spy on the four services under load.

    uv run --frozen python -m bench.profile_run [--runs 600] [--seconds 15] [--out DIR]

Starts Podium's stack as scenario (c) does (PostgreSQL, Redis broker, zero-latency model),
POSTs runs with 16 connections while ``py-spy record --gil`` samples each service for
``--seconds`` (the thread holding the GIL: where the process's Python CPU goes, not where
its threads wait), then prints, per process, its own time by package (sqlalchemy, psycopg,
celery, kombu, redis, podium...) and the functions that hold the most samples, by own time
and by time spent under them. The raw profiles (collapsed stacks, for any flame graph tool)
are left in ``--out``. Needs ``py-spy`` on PATH (``pip install py-spy``) and the right to
trace the services' processes (root, or ptrace allowed).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench import harness
from bench.harness import BenchSession, PodiumStack, log

CONCURRENCY = 16


def top(collapsed: Path, n: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(own time, total time) shares of the top ``n`` frames of a collapsed-stacks file."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if samples == 0:
        return [], []
    return (
        [(f, round(100 * c / samples, 1)) for f, c in own.most_common(n)],
        [(f, round(100 * c / samples, 1)) for f, c in total.most_common(n * 3) if c < samples][:n],
    )


def by_package(collapsed: Path) -> list[tuple[str, float]]:
    """Own time grouped by top-level package (sqlalchemy, psycopg, celery, kombu, redis,
    podium...), as shares of the samples."""
    own: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        samples += int(count_text)
        own[_short(stack.split(";")[-1]).split(".", 1)[0]] += int(count_text)
    return [(p, round(100 * c / samples, 1)) for p, c in own.most_common()] if samples else []


def _short(frame: str) -> str:
    """``function (path/to/module.py:12)`` -> ``module.function``."""
    name, _, where = frame.partition(" (")
    path = where.split(":", 1)[0]
    module = path.rsplit("site-packages/", 1)[-1].rsplit("/src/", 1)[-1]
    return f"{module.removesuffix('.py').replace('/', '.')}.{name}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--rate", type=int, default=50, help="samples per second")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not on PATH: pip install py-spy")
    with BenchSession() as session:
        out = args.out or Path(tempfile.mkdtemp(prefix="podium-profile-"))
        out.mkdir(parents=True, exist_ok=True)
        stack = PodiumStack(session, label="profile")
        try:
            stack.start_all()
            tenant = stack.create_tenant("profile")
            threads = harness.create_threads(stack.url, tenant.key, args.runs + 20, CONCURRENCY)
            harness.post_runs(stack.url, tenant.key, threads[:20], concurrency=CONCURRENCY)
            load = threading.Thread(
                target=harness.post_runs,
                args=(stack.url, tenant.key, threads[20:]),
                kwargs={"concurrency": CONCURRENCY},
                daemon=True,
            )
            load.start()
            time.sleep(1.0)
            log(f"profiling {', '.join(stack.services)} for {args.seconds:g}s")
            spies = {
                name: subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(svc.pid),
                        "--duration",
                        str(int(args.seconds)),
                        "--rate",
                        str(args.rate),
                        # Sampling without pausing the process: a pause per sample of a
                        # 64-thread worker stretches the run far past its duration.
                        "--nonblocking",
                        # Only the thread holding the GIL: where the process's Python CPU
                        # goes, not where its threads wait.
                        "--gil",
                        "--format",
                        "raw",
                        "--output",
                        str(out / f"{name}.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for name, svc in stack.services.items()
            }
            for spy in spies.values():
                spy.wait(timeout=args.seconds * 4 + 60)
            load.join(timeout=300)
        finally:
            stack.close()
        for name in spies:
            path = out / f"{name}.txt"
            if not path.exists():
                print(f"\n{name}: no profile (py-spy could not attach?)")
                continue
            own, total = top(path, args.top)
            print(f"\n=== {name} (active samples; % of the process's)")
            packages = ", ".join(f"{p} {share:g}%" for p, share in by_package(path)[:8])
            print(f"  own time by package: {packages}")
            print("  own time:")
            for frame, share in own:
                print(f"    {share:5.1f}%  {frame}")
            print("  under (inclusive):")
            for frame, share in total:
                print(f"    {share:5.1f}%  {frame}")
        print(f"\nraw profiles: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

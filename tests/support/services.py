"""Make sure the machine's Redis and PostgreSQL are up; start them if they are not."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

REDIS_START = [
    "redis-server",
    "--daemonize",
    "yes",
    "--bind",
    "127.0.0.1",
    "-::1",
    "--port",
    "6379",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    "/var/lib/redis",
    "--logfile",
    "/var/log/redis/ci.log",
]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _listening(port):
            return True
        time.sleep(0.3)
    return False


def ensure_redis() -> None:
    if _listening(6379):
        return
    if shutil.which("redis-server") is None:
        raise RuntimeError("Redis is not running on 6379 and redis-server is not installed")
    subprocess.run(REDIS_START, check=False)
    if not _wait(6379, 15):
        raise RuntimeError("Redis did not start on 127.0.0.1:6379")


def ensure_postgres() -> None:
    if _listening(5432):
        return
    versions = (
        sorted(p.name for p in Path("/etc/postgresql").glob("*"))
        if Path("/etc/postgresql").exists()
        else []
    )
    if not versions or shutil.which("pg_ctlcluster") is None:
        raise RuntimeError("PostgreSQL is not running on 5432 and no local cluster was found")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"], check=False
    )
    if not _wait(5432, 30):
        raise RuntimeError("PostgreSQL did not start on 127.0.0.1:5432")

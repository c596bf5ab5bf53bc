"""Starting `podium dev` (the embedded mode) as a subprocess for a test."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_embedded(
    env: dict[str, str], workdir: Path, timeout: float = 60
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `podium dev` with ``env`` (which sets PODIUM_HTTP_PORT) and wait until ready."""
    log = (workdir / "dev.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from podium.cli.main import cli; cli()", "dev"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{env['PODIUM_HTTP_PORT']}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"podium dev exited:\n{(workdir / 'dev.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("podium dev never became ready")
        time.sleep(0.2)


def stop_embedded(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()

"""A real OpenAI-compatible LLM server for the tests in this folder.

llama-cpp-python's server (`python -m llama_cpp.server`, same interpreter) runs Gemma 3 270M on
the CPU. The GGUF carries no chat template, so the server would fall back to the llama-2 format;
`--chat_format gemma` (llama-cpp-python's built-in `<start_of_turn>` format) is set instead.
That one format serves both plain chat and forced tool calls: when `tool_choice` names a
function, llama-cpp-python compiles that function's JSON schema into a grammar and returns the
constrained output as an OpenAI `tool_calls` entry. Limits of this format, by design of
llama-cpp-python: system messages are dropped (Gemma has no system role), tool descriptions are
not shown to the model, `tool_choice="auto"`/`"required"` yield plain text, and streamed
responses carry no usage (`stream_options` is ignored).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.realllm.model import gemma_model_path
from tests.support.stack import free_port

HERE = Path(__file__).parent
MODEL_ALIAS = "gemma-3-270m"
CHAT_FORMAT = "gemma"
N_CTX = 4096  # a ~2k-token prompt plus its answer
N_THREADS = 2
STARTUP_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class LlamaServer:
    base_url: str  # ends in /v1, as OpenAI clients want it
    model: str
    chat_format: str
    args: tuple[str, ...]
    log_path: Path
    startup_s: float


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.realllm)


def _log_tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


def _models_answer(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=2) as resp:
            body = json.load(resp)
    except (OSError, ValueError):
        return False
    return bool(body.get("data"))


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    if importlib.util.find_spec("llama_cpp") is None:
        message = (
            "llama-cpp-python is not installed: run `make install-test` "
            "(uv sync --frozen --group realllm)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)

    model_path = gemma_model_path()
    port = free_port()
    args = (
        "--model",
        str(model_path),
        "--model_alias",
        MODEL_ALIAS,
        "--chat_format",
        CHAT_FORMAT,
        "--n_ctx",
        str(N_CTX),
        "--n_threads",
        str(N_THREADS),
        "--n_threads_batch",
        str(N_THREADS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        while not _models_answer(base_url):
            if proc.poll() is not None:
                pytest.fail(
                    f"llama_cpp.server exited with {proc.returncode} before answering; "
                    f"log tail:\n{_log_tail(log_path)}"
                )
            if time.monotonic() - started > STARTUP_TIMEOUT_S:
                pytest.fail(
                    f"llama_cpp.server did not answer {base_url}/models within "
                    f"{STARTUP_TIMEOUT_S:.0f} s; log tail:\n{_log_tail(log_path)}"
                )
            time.sleep(0.25)
        yield LlamaServer(
            base_url=base_url,
            model=MODEL_ALIAS,
            chat_format=CHAT_FORMAT,
            args=args,
            log_path=log_path,
            startup_s=time.monotonic() - started,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

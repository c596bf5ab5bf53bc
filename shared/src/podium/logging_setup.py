"""One log format for every service."""

from __future__ import annotations

import logging


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Per-request access logs drown the service logs under load.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)

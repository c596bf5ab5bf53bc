"""``podium-gateway``: the HTTP API as its own process."""

from __future__ import annotations

import uvicorn

from podium.process import prepare_process
from podium.runtime import Runtime
from podium.settings import get_settings
from podium_gateway.app import create_app


def main() -> None:
    settings = get_settings()
    prepare_process(settings)
    runtime = Runtime(settings, name="gateway")
    uvicorn.run(
        create_app(runtime),
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
        access_log=False,
    )


if __name__ == "__main__":
    main()

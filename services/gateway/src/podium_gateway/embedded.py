"""The gateway as a pluggable service (see podium.service)."""

from podium.service import ServiceSpec
from podium_gateway.app import create_app

SERVICE = ServiceSpec(name="gateway", make_asgi=create_app)

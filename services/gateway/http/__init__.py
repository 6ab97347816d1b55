"""The HTTP gateway: the seed pilot's ``POST /infer``, job and fleet views, OpenAI-compatible routes,
Server-Sent Events streaming and the dashboard, all submitting through ``Gateway.infer``."""

from services.gateway.http.app import create_app
from services.gateway.http.server import HttpGateway

__all__ = ["HttpGateway", "create_app"]

"""``HttpGateway``: a ``Gateway`` (NATS entrypoint too) plus the HTTP app served by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import uvicorn

from services.gateway.config import GatewayConfig
from services.gateway.http.apikeys import ApiKeys
from services.gateway.http.app import create_app
from services.gateway.http.context import HttpState
from services.gateway.service import Gateway
from tether.settings import Settings
from tether.store import JobStore, open_store
from tether.tasks import closing_on_failure

log = logging.getLogger(__name__)


class HttpGateway:
    """Serve HTTP on ``host:port`` (port 0: a free one, see ``port`` after ``start``).

    With ``gateway`` given (tests, or a process that already runs one) it is used and not closed;
    otherwise one is started on its own NATS connection.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        gateway: Gateway | None = None,
        config: GatewayConfig | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self.settings = settings
        self.gateway = gateway or Gateway(settings, config=config)
        self._own_gateway = gateway is None
        self.host = host or self.gateway.config.http_host
        self.port = settings.http_port if port is None else port
        self.store: JobStore | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Start the gateway (unless given one), the store and the HTTP server; a start that fails
        half-way (a port in use, say) closes what it had opened before the error propagates."""
        await closing_on_failure(self._start(), self.close)

    async def _start(self) -> None:
        if self._own_gateway:
            await self.gateway.start()
        assert self.gateway.js is not None
        self.store = open_store(self.settings.store_url)
        try:
            await self.store.open()
        except Exception as exc:  # job views degrade to RESULTS only; inference does not need the store
            log.warning("store unavailable to the HTTP gateway", extra={"error": str(exc)})
            self.store = None
        state = HttpState(gateway=self.gateway, apikeys=await ApiKeys.open(self.gateway.js), store=self.store)
        app = create_app(state)
        self._sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, self.port))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
            # A bound on open connections (slow or stalled clients included): past it, 503 at once.
            # uvicorn has no deadline for reading a request's headers or body: on an open network put
            # a reverse proxy with those timeouts in front (README, Operations).
            limit_concurrency=self.gateway.config.http_max_connections,
            timeout_keep_alive=5,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="http")
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        log.info("http gateway listening", extra={"url": self.url})

    async def close(self) -> None:
        try:
            if self._server is not None:
                self._server.should_exit = True
            if self._task is not None:
                with contextlib.suppress(Exception):
                    await self._task
                self._task = None
        finally:  # cut short (the server's task cancelled): the store's thread would keep the process alive
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            store, self.store = self.store, None
            try:
                if store is not None:
                    await store.close()
            finally:
                if self._own_gateway:
                    await self.gateway.close()

    async def __aenter__(self) -> HttpGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

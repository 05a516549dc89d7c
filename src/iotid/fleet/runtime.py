"""One fleet process: the operator API and the device gateway over one database, with the
revocation follower that makes a revocation bite within a second; and ``serve``, which runs
several such processes.

Scope:

- :class:`FleetRuntime` builds everything of one process from a :class:`FleetConfig`: the
  database (migrated at start), the fleet's keys (AIA/CDP URLs from ``public_url``), the FastAPI
  app (``iotid.fleet.app.create_app``), the gateway's route table (every slice's
  ``register``), the :class:`GatewayServer`, and a :class:`RevocationFollower` whose events
  close the revoked devices' live connections (PostgreSQL LISTEN/NOTIFY across processes;
  SQLite polls). :meth:`FleetRuntime.serve` runs uvicorn and the gateway on one event loop;
  :meth:`FleetRuntime.run_in_thread` does it in a background thread (tests, the demo).
- :func:`serve`: ``workers`` processes (spawned), each a FleetRuntime; with more than one, every
  worker binds the API and gateway ports with SO_REUSEPORT and the kernel spreads connections.
  SIGTERM/SIGINT stop them all.

Not in scope: the rules (the slices), configuration files (``iotid.fleet.config``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from iotid.fleet.app import FleetServices, create_fleet_app
from iotid.fleet.commands import gateway as commands_gateway
from iotid.fleet.config import FleetConfig
from iotid.fleet.db import Database
from iotid.fleet.enrollment import gateway as enrollment_gateway
from iotid.fleet.enrollment.api import install_nonce_limit
from iotid.fleet.firmware import gateway as firmware_gateway
from iotid.fleet.gateway.presence import PresenceService
from iotid.fleet.gateway.routing import DeviceContext, Routes
from iotid.fleet.gateway.server import GatewayServer
from iotid.fleet.issuing import FleetKeys
from iotid.fleet.metrics import FleetMetrics
from iotid.fleet.ratelimit import RateLimit
from iotid.fleet.revocation.follower import RevocationFollower
from iotid.fleet.revocation.index import RevocationIndex, RevokedEvent
from iotid.fleet.rotation import gateway as rotation_gateway
from iotid.fleet.telemetry import gateway as telemetry_gateway

__all__ = ["FleetRuntime", "RunningFleet", "build_routes", "serve"]

_log = logging.getLogger(__name__)


def build_routes(services: FleetServices) -> Routes:
    """The gateway's route table: every slice's device-facing endpoints."""
    routes = Routes()
    telemetry_gateway.register(routes, services.telemetry)
    commands_gateway.register(routes, services.commands)
    firmware_gateway.register(routes, services.firmware)
    rotation_gateway.register(routes, services.rotation)
    enrollment_gateway.register(routes, services.enrollment)
    return routes


def _listen(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class FleetRuntime:
    """Everything one fleet process runs (see the module docstring)."""

    def __init__(
        self,
        config: FleetConfig,
        *,
        passphrase: bytes | None = None,
        reuse_port: bool = False,
        migrate: bool = True,
        ceremony_record: Path | None = None,
    ) -> None:
        self.config = config
        self.db = Database(config.db_url)
        if migrate:
            self.db.upgrade()
        self.keys = FleetKeys.load(
            config.directory,
            passphrase=passphrase,
            ocsp_url=f"{config.base_url}/ocsp",
            crl_url=f"{config.base_url}/crl/issuing.crl",
        )
        self.services = FleetServices.build(
            self.db,
            self.keys,
            cert_lifetime=config.cert_lifetime,
            nonce_ttl=config.nonce_ttl,
            ceremony_record=ceremony_record or config.ceremony_record,
        )
        self.metrics = FleetMetrics(self.db)
        self.app: FastAPI = create_fleet_app(self.services, self.metrics)
        install_nonce_limit(
            self.app,
            RateLimit(rate=config.nonce_rate, burst=config.nonce_burst)
            if config.nonce_rate > 0
            else RateLimit.off(),
        )
        self.index = RevocationIndex()
        self._reuse_port = reuse_port
        self._api_sock = _listen(config.api_host, config.api_port, reuse_port=reuse_port)
        self.api_port = int(self._api_sock.getsockname()[1])
        self.gateway = GatewayServer(
            self.keys,
            build_routes(self.services),
            lambda uid, serial: self.index.is_revoked(uid=uid, serial=serial),
            host=config.gateway_host,
            port=config.gateway_port,
            on_connect=self._on_connect,
            presence=PresenceService(self.db),
            reuse_port=reuse_port,
        )
        self.follower = RevocationFollower(self.db, self.index, on_event=self._on_revoked)
        self._server: uvicorn.Server | None = None
        self.started = threading.Event()

    def __repr__(self) -> str:
        return f"FleetRuntime({self.config!r})"

    @property
    def gateway_port(self) -> int:
        return self.gateway.port

    def _on_connect(self, ctx: DeviceContext) -> None:
        rotation_gateway.on_new_certificate(self.services.rotation, ctx)

    def _on_revoked(self, event: RevokedEvent) -> None:
        self.gateway.drop(event.uids, event.serials)
        self.services.revocation_latency.observe(event)  # applied and dropped: the latency

    async def serve(self) -> None:
        """Run until :meth:`stop` (or SIGTERM/SIGINT in the main thread)."""
        self.follower.start()
        await self.gateway.start()
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30
        )
        self._server = uvicorn.Server(config)
        serving = asyncio.ensure_future(self._server.serve(sockets=[self._api_sock]))
        while not self._server.started and not serving.done():
            await asyncio.sleep(0.01)
        self.started.set()
        _log.info(
            "fleet serving: API %s:%d, gateway %s:%d",
            self.config.api_host,
            self.api_port,
            self.config.gateway_host,
            self.gateway.port,
        )
        try:
            await serving
        finally:
            await self.gateway.stop()
            self.follower.stop()
            self.db.dispose()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    def run_in_thread(self, timeout: float = 30.0) -> RunningFleet:
        """Serve in a background thread; returns once both listeners accept connections."""
        thread = threading.Thread(target=lambda: asyncio.run(self.serve()), daemon=True)
        thread.start()
        if not self.started.wait(timeout):
            self.stop()
            raise RuntimeError("the fleet did not start in time")
        return RunningFleet(self, thread)


@dataclass
class RunningFleet:
    runtime: FleetRuntime
    thread: threading.Thread

    @property
    def api_url(self) -> str:
        return f"http://{self.runtime.config.api_host}:{self.runtime.api_port}"

    @property
    def gateway_address(self) -> tuple[str, int]:
        return self.runtime.config.gateway_host, self.runtime.gateway_port

    def stop(self, timeout: float = 30.0) -> None:
        self.runtime.stop()
        self.thread.join(timeout)

    def __enter__(self) -> RunningFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _worker(config: FleetConfig, passphrase: bytes | None, reuse_port: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s")
    runtime = FleetRuntime(config, passphrase=passphrase, reuse_port=reuse_port)

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        runtime.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    asyncio.run(runtime.serve())


def serve(config: FleetConfig, *, workers: int = 1, passphrase: bytes | None = None) -> None:
    """Run the fleet in ``workers`` processes until SIGTERM/SIGINT."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    database = Database(config.db_url)
    try:
        database.upgrade()  # once, before the workers race for it
    finally:
        database.dispose()
    if workers == 1:
        _worker(config, passphrase, False)
        return
    if config.api_port == 0 or config.gateway_port == 0:
        raise ValueError("several workers need fixed ports (SO_REUSEPORT shares them)")
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_worker, args=(config, passphrase, True), name=f"fleet-{i}")
        for i in range(workers)
    ]
    for child in children:
        child.start()
    stopping = threading.Event()

    def _forward(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    while not stopping.is_set() and all(c.is_alive() for c in children):
        time.sleep(0.2)
    for child in children:
        if child.is_alive() and child.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                child.terminate()
    for child in children:
        child.join(30)

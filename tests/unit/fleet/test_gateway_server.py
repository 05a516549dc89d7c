"""The device gateway server: mutual TLS with Python ``ssl`` clients (software keys certified by
the fleet's issuing CA), h11 keep-alive, error rendering, activation and last-seen, the
revocation check at the handshake and per request, and ``drop``; on SQLite and PostgreSQL.

The SE-backed client and the TLS refusals are in tests/integration/test_gateway_tls.py.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from iotid.fleet.db import Database
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.errors import Conflict
from iotid.fleet.gateway import (
    DeviceContext,
    GatewayRequest,
    GatewayResponse,
    GatewayServer,
    PresenceService,
    Routes,
    RunningGateway,
)
from iotid.fleet.issuing import serial_hex
from iotid.fleet.models import AuditEntry, Device, DeviceState
from support.fleetworld import FleetWorld, build_world
from support.gatewayworld import client_context, https, import_world, request, software_device

WHOAMI = "/v1/device/whoami"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(tmp_path_factory.mktemp("world"), {"p256-a": ("p256", 3)})


@dataclass
class Revocations:
    uids: set[str] = field(default_factory=set)
    serials: set[str] = field(default_factory=set)
    calls: int = 0
    fail: bool = False

    def __call__(self, uid: str, serial: str) -> bool:
        self.calls += 1
        if self.fail:
            raise RuntimeError("index unavailable")
        return uid in self.uids or serial in self.serials


@dataclass
class Gateway:
    running: RunningGateway
    db: Database
    world: FleetWorld
    revoked: Revocations
    connected: list[DeviceContext]
    tmp: Path

    @property
    def server(self) -> GatewayServer:
        return self.running.server

    def client(self, uid: str, **kw: object) -> http.client.HTTPSConnection:
        key, cert = software_device(self.world.keys, uid)
        context = client_context(self.world.keys, self.tmp / "clients", key, [cert], **kw)  # type: ignore[arg-type]
        return https(self.running.port, context)


def _routes() -> Routes:
    routes = Routes()

    def boom(_ctx: DeviceContext, _req: GatewayRequest) -> GatewayResponse:
        raise RuntimeError("database password is hunter2")

    def conflict(_ctx: DeviceContext, _req: GatewayRequest) -> GatewayResponse:
        raise Conflict("thing.wrong_state", "the thing is busy")

    def echo(ctx: DeviceContext, req: GatewayRequest) -> GatewayResponse:
        return GatewayResponse.of_json(
            {"uid": ctx.uid, "size": len(req.body), "name": req.params.get("name")}
        )

    routes.add("GET", "/v1/device/boom", boom)
    routes.add("GET", "/v1/device/conflict", conflict)
    routes.add("POST", "/v1/device/echo/{name}", echo)
    return routes


@pytest.fixture
def gateway(world: FleetWorld, fleet_db: Database, tmp_path: Path) -> Iterator[Gateway]:
    devices = import_world(fleet_db, world)
    for card in world.batches["p256-a"].cards[:2]:
        devices.transition(
            card.uid_hex, {DeviceState.MANUFACTURED}, DeviceState.ENROLLED, actor="t"
        )
    revoked = Revocations()
    connected: list[DeviceContext] = []
    server = GatewayServer(
        world.keys,
        _routes(),
        revoked,
        host="127.0.0.1",
        port=0,
        on_connect=connected.append,
        presence=PresenceService(fleet_db, interval=3600),
        max_workers=4,
        max_body=4096,
    )
    running = server.run_in_thread()
    try:
        yield Gateway(running, fleet_db, world, revoked, connected, tmp_path)
    finally:
        running.stop()


def _uid(world: FleetWorld, i: int = 0) -> str:
    return world.batches["p256-a"].cards[i].uid_hex


def _state(db: Database, uid: str) -> tuple[DeviceState, dt.datetime | None]:
    with db.transaction(write=False) as session:
        row = session.execute(
            select(Device.state, Device.last_seen_at).where(Device.uid == uid)
        ).one()
    return DeviceState(row.state), row.last_seen_at


def _cut(conn: http.client.HTTPConnection, path: str = WHOAMI) -> bool:
    """The connection is closed without an answer."""
    conn.auto_open = 0  # type: ignore[attr-defined]  # no silent reconnect by http.client
    try:
        status, _ = request(conn, "GET", path)
    except (OSError, http.client.HTTPException):
        return True
    return status >= 500  # never: a cut connection gets no response at all


def _revoked_answer(conn: http.client.HTTPConnection) -> str:
    """The error code of the closing 403 a revoked device or certificate gets."""
    conn.request("GET", WHOAMI)
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 403
    assert response.getheader("connection") == "close"
    return str(body["error"])


def _refused(conn: http.client.HTTPConnection) -> bool:
    """Cut, or (on a fresh connection) answered 403 revoked."""
    try:
        return _revoked_answer(conn) in ("device.revoked", "certificate.revoked")
    except (OSError, http.client.HTTPException):
        return True


def test_whoami_activates_and_keeps_alive(gateway: Gateway) -> None:
    uid = _uid(gateway.world)
    conn = gateway.client(uid)
    status, body = request(conn, "GET", WHOAMI)
    assert status == 200
    assert body["uid"] == uid and body["state"] == "active" and body["epoch"] == 0
    assert dt.datetime.fromisoformat(body["certificate_not_after"]) > dt.datetime.now(dt.UTC)
    state, seen = _state(gateway.db, uid)
    assert state is DeviceState.ACTIVE and seen is not None
    with gateway.db.transaction(write=False) as session:
        entries = session.execute(
            select(AuditEntry).where(AuditEntry.subject == f"device:{uid}")
        ).scalars()
        changes = [e for e in entries if e.action == "device.state_changed"]
    assert changes[-1].actor == "gateway"
    # the same TLS connection serves more requests (keep-alive), one hook call per connection
    for _ in range(3):
        assert request(conn, "GET", WHOAMI)[0] == 200
    assert gateway.server.live_connections() == 1
    assert [c.uid for c in gateway.connected] == [uid]
    conn.close()


def test_routes_errors_and_limits(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    conn = gateway.client(_uid(gateway.world))
    status, body = request(conn, "POST", "/v1/device/echo/abc", raw=b"x" * 100)
    assert (status, body) == (200, {"uid": _uid(gateway.world), "size": 100, "name": "abc"})
    assert request(conn, "GET", "/v1/device/nothing")[1]["error"] == "request.no_route"
    assert request(conn, "GET", "/v1/device/echo/abc")[0] == 404
    status, body = request(conn, "GET", "/v1/device/conflict")
    assert (status, body) == (409, {"error": "thing.wrong_state", "message": "the thing is busy"})
    with caplog.at_level(logging.ERROR, logger="iotid.fleet.gateway.server"):
        status, body = request(conn, "GET", "/v1/device/boom")
    assert (status, body) == (500, {"error": "internal"})
    assert "hunter2" in caplog.text and "Traceback" in caplog.text  # logged, never sent
    status, body = request(conn, "POST", "/v1/device/echo/abc", raw=b"x" * 5000)
    assert status == 413 and body["error"] == "request.too_large"
    conn.close()


def test_unregistered_and_retired_devices_are_forbidden(gateway: Gateway) -> None:
    conn = gateway.client("0102030405060708")
    status, body = request(conn, "GET", WHOAMI)
    assert (status, body["error"]) == (403, "device.not_allowed")
    manufactured = gateway.client(_uid(gateway.world, 2))
    assert request(manufactured, "GET", WHOAMI)[0] == 403
    uid = _uid(gateway.world, 1)
    DeviceService(gateway.db, gateway.world.root).transition(
        uid, {DeviceState.ENROLLED}, DeviceState.RETIRED, actor="t"
    )
    assert request(gateway.client(uid), "GET", WHOAMI)[0] == 403


def test_revoked_device_is_told_so_on_its_first_and_every_request(gateway: Gateway) -> None:
    uid = _uid(gateway.world)
    gateway.revoked.uids.add(uid)
    # A new connection: the device is told, in words, over the authenticated channel, and the
    # connection closes (it never has to guess its revocation from a cut connection).
    assert _revoked_answer(gateway.client(uid)) == "device.revoked"
    gateway.revoked.uids.clear()
    conn = gateway.client(uid)
    assert request(conn, "GET", WHOAMI)[0] == 200
    gateway.revoked.uids.add(uid)  # no drop: the per-request check alone refuses
    assert _revoked_answer(conn) == "device.revoked"
    assert _cut(conn)  # and the connection is closed after the answer
    gateway.revoked.uids.clear()


def test_revoked_certificate_of_a_good_device_is_certificate_revoked(gateway: Gateway) -> None:
    uid = _uid(gateway.world)
    key, cert = software_device(gateway.world.keys, uid)
    gateway.revoked.serials.add(serial_hex(cert.serial_number))
    context = client_context(gateway.world.keys, gateway.tmp / "rc", key, [cert])
    assert _revoked_answer(https(gateway.running.port, context)) == "certificate.revoked"


def test_an_index_that_cannot_answer_cuts_but_never_says_revoked(gateway: Gateway) -> None:
    uid = _uid(gateway.world)
    gateway.revoked.fail = True  # fail closed, without a false "revoked"
    assert _cut(gateway.client(uid))


@pytest.mark.parametrize("by", ["uid", "serial"])
def test_drop_closes_live_keepalive_connections(gateway: Gateway, by: str) -> None:
    uid, other = _uid(gateway.world), _uid(gateway.world, 1)
    key, cert = software_device(gateway.world.keys, uid)
    context = client_context(gateway.world.keys, gateway.tmp / "c", key, [cert])
    victims = [https(gateway.running.port, context) for _ in range(2)]
    survivor = gateway.client(other)
    for conn in [*victims, survivor]:
        assert request(conn, "GET", WHOAMI)[0] == 200
    assert gateway.server.live_connections() == 3
    done = threading.Event()

    def revoke_from_another_thread() -> None:
        if by == "uid":
            gateway.server.drop([uid.lower()], [])
        else:
            gateway.server.drop([], [serial_hex(cert.serial_number)])
        done.set()

    threading.Thread(target=revoke_from_another_thread).start()
    assert done.wait(5)
    start = time.monotonic()
    while gateway.server.live_connections() > 1 and time.monotonic() - start < 5:
        time.sleep(0.01)
    assert gateway.server.live_connections() == 1
    # The latency itself is a benchmark figure (bench/bench_revocation.py), not a test assertion.
    for conn in victims:
        assert _cut(conn)
    assert request(survivor, "GET", WHOAMI)[0] == 200


def test_tls12_client(gateway: Gateway) -> None:
    conn = gateway.client(_uid(gateway.world), version=ssl.TLSVersion.TLSv1_2)
    assert request(conn, "GET", WHOAMI)[0] == 200
    assert conn.sock is not None
    assert conn.sock.version() == "TLSv1.2"  # type: ignore[attr-defined]


def _raw_exchange(gateway: Gateway, data: bytes) -> bytes:
    key, cert = software_device(gateway.world.keys, _uid(gateway.world))
    context = client_context(gateway.world.keys, gateway.tmp / "raw", key, [cert])
    with (
        socket.create_connection(("127.0.0.1", gateway.running.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(data)
        got = b""
        while chunk := tls.recv(65536):
            got += chunk
    return got


def test_malformed_http_gets_an_error_and_a_close(gateway: Gateway) -> None:
    assert _raw_exchange(gateway, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    huge = b"GET / HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 40000  # a head that never ends
    assert _raw_exchange(gateway, huge).startswith(b"HTTP/1.1 431 ")
    # HTTP/1.0 without keep-alive: one answer, then the gateway closes
    answer = _raw_exchange(gateway, b"GET /v1/device/whoami HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"uid"' in answer

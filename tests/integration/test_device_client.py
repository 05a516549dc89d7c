"""The device's fleet client (``iotid.device``) with real cards against the REAL fleet: the operator
API (``create_app(..., keys=)`` under uvicorn) and the device gateway (``GatewayServer`` with the
slices' routes, the rotation connection hook, presence and the revocation index + follower), on
SQLite and PostgreSQL.

Covered: enrollment (and a refusal with its reason), whoami, signed telemetry (P-256, P-384),
commands decrypted on the card and acknowledged, the firmware loop (valid -> applied and floor
raised; forged -> invalid, not applied), renewal, key rotation and its crash recovery (answer
lost before COMMIT, COMMIT done but ``complete`` never sent, a pending key the fleet never saw),
revocation stopping the client without a retry storm, and ``iotid device enroll`` /
``iotid device telemetry``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from iotid.cli.main import app as cli_app
from iotid.device import (
    DeviceRevoked,
    DeviceStateError,
    FleetClient,
    FleetRefused,
    FleetUnavailable,
    GatewaySession,
    RetryPolicy,
)
from iotid.factory.batch import BATCHES_DIR, FIRMWARE_KEY
from iotid.factory.firmware import sign_mcuboot
from iotid.factory.line import read_line_key
from iotid.factory.stores import open_store
from iotid.fleet.app import create_app
from iotid.fleet.commands.gateway import register as register_commands
from iotid.fleet.commands.service import CommandService
from iotid.fleet.db import Database
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.enrollment.gateway import register as register_renewal
from iotid.fleet.enrollment.service import EnrollmentService
from iotid.fleet.firmware import FirmwareService
from iotid.fleet.firmware.gateway import register as register_firmware
from iotid.fleet.gateway import GatewayServer, PresenceService, Routes, RunningGateway
from iotid.fleet.revocation.follower import RevocationFollower
from iotid.fleet.revocation.index import RevocationIndex
from iotid.fleet.revocation.service import RevocationService
from iotid.fleet.rotation.gateway import connection_hook
from iotid.fleet.rotation.gateway import register as register_rotation
from iotid.fleet.rotation.service import RotationService
from iotid.fleet.telemetry.gateway import register as register_telemetry
from iotid.fleet.telemetry.service import TelemetryService
from iotid.host import rotation as host_rotation
from iotid.spec.firmware import ImageVersion
from support.fleetworld import FleetWorld, WorldCard, build_world
from unit.fleet.conftest import (  # noqa: F401 - the fleet fixtures
    empty_fleet_db,
    fleet_db,
    fleet_db_url,
    postgres_url,
)

pytestmark = pytest.mark.slow

STRANGER = "stranger"  # a batch the fleet never imports
FW_BODY = bytes(range(256)) * 24


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(
        tmp_path_factory.mktemp("device-client"),
        {"p256-a": ("p256", 2), "p384-a": ("p384", 1), STRANGER: ("p256", 1)},
    )


@dataclass
class Fleet:
    world: FleetWorld
    db: Database
    api_url: str
    gateway: RunningGateway
    commands: CommandService
    telemetry: TelemetryService
    firmware: FirmwareService
    revocation: RevocationService
    tmp: Path

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def card(self, batch: str = "p256-a", index: int = 0) -> WorldCard:
        card = self.world.batches[batch].cards[index]
        return card.copy(self.tmp / f"card-{batch}-{index}")

    def client(self, card: WorldCard, **kw: Any) -> FleetClient:
        return FleetClient(
            card.se(),
            self.api_url,
            gateway=self.gateway_address,
            state_dir=self.tmp / f"state-{card.uid_hex}",
            retry=RetryPolicy(attempts=3, base=0.01, cap=0.05),
            **kw,
        )


def _serve_api(app: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, port


@pytest.fixture
def fleet(world: FleetWorld, fleet_db: Database, tmp_path: Path) -> Iterator[Fleet]:  # noqa: F811
    devices = DeviceService(fleet_db, world.root)
    for name, batch in world.batches.items():
        if name != STRANGER:
            devices.import_manifest(batch.manifest_bytes, batch.signature, actor="test")
    keys = world.keys
    app = create_app(fleet_db.url, world.root.public_bytes(serialization.Encoding.PEM), keys=keys)
    api, api_thread, api_port = _serve_api(app)

    commands, telemetry = CommandService(fleet_db), TelemetryService(fleet_db)
    firmware, rotation = FirmwareService(fleet_db), RotationService(fleet_db, keys)
    routes = Routes()
    register_commands(routes, commands)
    register_telemetry(routes, telemetry)
    register_firmware(routes, firmware)
    register_rotation(routes, rotation)
    register_renewal(routes, EnrollmentService(fleet_db, keys))
    index = RevocationIndex()
    index.load(fleet_db)
    server = GatewayServer(
        keys,
        routes,
        lambda uid, serial: index.is_revoked(uid=uid, serial=serial),
        on_connect=connection_hook(rotation),
        presence=PresenceService(fleet_db),
    )
    follower = RevocationFollower(
        fleet_db, index, on_event=lambda ev: server.drop(ev.uids, ev.serials)
    )
    follower.start()
    running = server.run_in_thread()
    try:
        yield Fleet(
            world,
            fleet_db,
            f"http://127.0.0.1:{api_port}",
            running,
            commands,
            telemetry,
            firmware,
            RevocationService(fleet_db, keys),
            tmp_path,
        )
    finally:
        running.stop()
        follower.stop()
        api.should_exit = True
        api_thread.join(30)


# -- enrollment and the everyday loop ------------------------------------------------------------
@pytest.mark.parametrize("batch", ["p256-a", "p384-a"])
def test_enroll_whoami_telemetry_commands(fleet: Fleet, batch: str) -> None:
    card = fleet.card(batch)
    with fleet.client(card) as client:
        info = client.enroll()
        assert (info.uid, info.epoch) == (card.uid_hex, 1)
        assert not client.api.connected  # no idle keep-alive to the API after enrolling
        assert client.se.mtls.chain()[0] == info.certificate
        assert (client.state.directory / "gateway-ca.pem").exists()  # type: ignore[operator]
        with client.gateway() as gw:
            me = gw.whoami()
            assert (me.uid, me.state, me.epoch) == (card.uid_hex, "active", 1)
            reading = gw.send_telemetry(b'{"t": 21.5}')
            assert reading
            fleet.commands.create(card.uid_hex, b"reboot", actor="test")
            fleet.commands.create(card.uid_hex, b"set interval 60", actor="test")
            got = gw.commands()
            assert [c.plaintext for c in got] == [b"reboot", b"set interval 60"]
            assert gw.commands() == []  # acknowledged
    stored = fleet.telemetry.list(card.uid_hex)
    assert len(stored) == 1


def test_enrollment_refused_with_reason(fleet: Fleet) -> None:
    stranger = fleet.world.batches[STRANGER].cards[0].copy(fleet.tmp / "stranger")
    with fleet.client(stranger) as client, pytest.raises(FleetRefused) as info:
        client.enroll()
    assert info.value.code == "enrollment.refused"
    assert info.value.reason == "uid_not_in_manifest"


def test_gateway_before_enrollment_is_a_state_error(fleet: Fleet) -> None:
    with fleet.client(fleet.card()) as client, pytest.raises(DeviceStateError):
        client.gateway()


def test_renew_certificate(fleet: Fleet) -> None:
    card = fleet.card()
    with fleet.client(card) as client:
        first = client.enroll()
        with client.gateway() as gw:
            renewed = gw.renew_certificate()
            assert renewed.serial != first.serial
            assert client.se.mtls.chain()[0] == renewed.certificate
            assert gw.whoami().epoch == 1  # reconnected with the new certificate
        assert client.state.get("serial") == renewed.serial


# -- firmware ------------------------------------------------------------------------------------
def _mcuboot(world: FleetWorld, batch: str, counter: int) -> bytes:
    store = open_store(world.ceremony_dir)
    store.unlock_operational(read_line_key(world.ceremony_dir / BATCHES_DIR / batch / "line.key"))
    signer = store.signer(FIRMWARE_KEY)
    return sign_mcuboot(FW_BODY, signer, version=ImageVersion(1, 4, 0, 0), security_counter=counter)


def test_firmware_update_valid_then_forged(fleet: Fleet) -> None:
    card = fleet.card()
    image = _mcuboot(fleet.world, "p256-a", counter=5)
    forged = image[:-20] + bytes([image[-20] ^ 1]) + image[-19:]
    fleet.firmware.publish("app-1.4", image, None, actor="test")
    fleet.firmware.publish("forged", forged, None, actor="test")
    with fleet.client(card) as client:
        client.enroll()
        with client.gateway() as gw:
            assert gw.check_firmware() is None
            fleet.firmware.assign("default", "app-1.4", actor="test")
            release = gw.check_firmware()
            assert release is not None and release.name == "app-1.4"
            outcome = gw.update_firmware()
            assert outcome is not None and outcome.applied and outcome.verdict.valid
            assert client.state.get("firmware_version") == release.version
            assert client.se.firmware.state().floor == 5
            assert gw.update_firmware() is None  # already applied

            fleet.firmware.assign("default", "forged", actor="test")
            outcome = gw.update_firmware()
            assert outcome is not None and not outcome.applied and not outcome.verdict.valid
            assert client.state.get("firmware_version") == release.version


# -- rotation ------------------------------------------------------------------------------------
def _rotated_ok(fleet: Fleet, client: FleetClient, epoch: int) -> None:
    assert client.se.rotation.state().epoch == epoch
    assert client.state.rotation is None and client.state.get("epoch") == epoch
    with client.gateway() as gw:
        assert gw.whoami().epoch == epoch
        gw.send_telemetry(b"after rotation")  # verified with the new key
        fleet.commands.create(client.state.get("uid"), b"to the new key", actor="test")
        assert [c.plaintext for c in gw.commands()] == [b"to the new key"]


@pytest.mark.parametrize("batch", ["p256-a", "p384-a"])
def test_rotation(fleet: Fleet, batch: str) -> None:
    card = fleet.card(batch)
    with fleet.client(card) as client:
        client.enroll()
        with client.gateway() as gw:
            old = client.se.mtls.chain()[0]
            info = gw.rotate()
            assert info.certificate != old
            assert client.se.mtls.chain()[0] == info.certificate
        _rotated_ok(fleet, client, 2)


class PowerCutError(Exception):
    pass


def test_rotation_resumes_when_commit_never_happened(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = fleet.card()
    with fleet.client(card) as client:
        client.enroll()
    real_commit = host_rotation.RotationSession.commit

    def cut(self: Any, ack: bytes) -> int:
        raise PowerCutError

    monkeypatch.setattr(host_rotation.RotationSession, "commit", cut)
    with fleet.client(card) as client, client.gateway() as gw, pytest.raises(PowerCutError):
        gw.rotate()
    monkeypatch.setattr(host_rotation.RotationSession, "commit", real_commit)
    # Reboot: the card still has the pending key, the journal the fleet's answer.
    with fleet.client(card) as client:
        assert client.se.rotation.state().pending
        assert client.state.rotation is not None
        with client.gateway() as gw:
            gw.rotate()
        _rotated_ok(fleet, client, 2)


def test_rotation_resends_the_request_when_the_answer_was_lost(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = fleet.card()
    with fleet.client(card) as client:
        client.enroll()
    real_call = GatewaySession.call

    def lossy(self: GatewaySession, method: str, path: str, *a: Any, **kw: Any) -> Any:
        answer = real_call(self, method, path, *a, **kw)
        if path == "/v1/device/rotation":
            raise PowerCutError  # the fleet prepared the rotation; the device never saw the answer
        return answer

    monkeypatch.setattr(GatewaySession, "call", lossy)
    with fleet.client(card) as client, client.gateway() as gw, pytest.raises(PowerCutError):
        gw.rotate()
    monkeypatch.setattr(GatewaySession, "call", real_call)
    with fleet.client(card) as client:
        journal = client.state.rotation
        assert journal is not None and "answer" not in journal
        with client.gateway() as gw:
            gw.rotate()  # the same request again: the fleet answers idempotently
        _rotated_ok(fleet, client, 2)


def test_rotation_completes_after_commit_without_complete(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = fleet.card()
    with fleet.client(card) as client:
        client.enroll()
    real_call = GatewaySession.call

    def cut(self: GatewaySession, method: str, path: str, *a: Any, **kw: Any) -> Any:
        if path == "/v1/device/rotation/complete":
            raise PowerCutError
        return real_call(self, method, path, *a, **kw)

    monkeypatch.setattr(GatewaySession, "call", cut)
    with fleet.client(card) as client, client.gateway() as gw, pytest.raises(PowerCutError):
        gw.rotate()
    monkeypatch.setattr(GatewaySession, "call", real_call)
    with fleet.client(card) as client:
        assert client.se.rotation.state().epoch == 2
        assert client.state.rotation is not None
        with client.gateway() as gw:
            gw.rotate()  # finishes: connects with the new certificate and completes
        _rotated_ok(fleet, client, 2)


def test_rotation_drops_a_pending_key_the_fleet_never_saw(fleet: Fleet) -> None:
    card = fleet.card()
    with fleet.client(card) as client:
        client.enroll()
        client.se.rotation.rotate(os.urandom(32))  # e.g. a crash before the request was journaled
        assert client.se.rotation.state().pending
        with client.gateway() as gw:
            gw.rotate()
        _rotated_ok(fleet, client, 2)


# -- revocation ----------------------------------------------------------------------------------
def test_revocation_stops_the_client(fleet: Fleet) -> None:
    card = fleet.card()
    with fleet.client(card) as client:
        client.enroll()
        with client.gateway() as gw:
            assert gw.whoami().state == "active"
            fleet.revocation.revoke_device(card.uid_hex, "key_compromise", actor="test")
            deadline = time.monotonic() + 10
            with pytest.raises(DeviceRevoked):
                while time.monotonic() < deadline:
                    with contextlib.suppress(FleetUnavailable):
                        gw.whoami()  # until the follower has the event
                    time.sleep(0.05)
        assert client.state.revoked
    with fleet.client(card) as client, pytest.raises(DeviceRevoked):
        client.gateway()  # remembered across reboots: no retry storm


# -- the CLI -------------------------------------------------------------------------------------
def test_cli_enroll_and_telemetry(fleet: Fleet) -> None:
    card = fleet.card()
    state = fleet.tmp / "cli-state"
    runner = CliRunner()
    result = runner.invoke(
        cli_app,
        [
            "device", "enroll", "--se", str(card.path), "--fleet", fleet.api_url,
            "--state-dir", str(state), "--gateway", fleet.gateway_address,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert card.uid_hex in result.output and "epoch" in result.output
    result = runner.invoke(
        cli_app,
        [
            "device", "telemetry", "--se", str(card.path), "--fleet", fleet.api_url,
            "--state-dir", str(state), "--data", '{"t": 1}',
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert '"id"' in result.output


def test_cli_enroll_error_is_one_line(fleet: Fleet) -> None:
    stranger = fleet.world.batches[STRANGER].cards[0].copy(fleet.tmp / "stranger-cli")
    result = CliRunner().invoke(
        cli_app,
        ["device", "enroll", "--se", str(stranger.path), "--fleet", fleet.api_url],
    )
    assert result.exit_code == 2
    assert "uid_not_in_manifest" in result.output
    assert "Traceback" not in result.output

"""The device application (``iotid.device.app``) with real factory-made cards against the REAL
fleet (``FleetRuntime.run_in_thread``: operator API, gateway, revocation follower) on SQLite.

Covered: first boot (PROVISION on a fresh card, enrollment with a quote), a cycle (telemetry
stored after the fleet verified its signature, a command decrypted on the card, the operator's
firmware downloaded, verified in the SE, staged, confirmed on the next boot and reported), a
rotation only once the operator scheduled it, revocation (status REVOKED, the last report, no
further traffic at the gateway or from the device, across a restart); the SE removed between
cycles, during the TLS handshake, mid firmware stream and mid rotation (SE_UNAVAILABLE, no
crash, no false revocation, recovery when it is back, the card consistent); a swarm of 8
devices; ``iotid device run``.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from iotid.cli.main import app as cli_app
from iotid.device import (
    DeviceApp,
    DeviceConfig,
    DeviceRevoked,
    DeviceStatus,
    RetryPolicy,
    SecureElementUnavailable,
    Swarm,
)
from iotid.factory.batch import BATCHES_DIR, FIRMWARE_KEY, create_batch
from iotid.factory.firmware import sign_mcuboot
from iotid.factory.line import personalise_batch, read_line_key
from iotid.factory.stores import open_store
from iotid.fleet.auth import Role, create_token
from iotid.fleet.config import FleetConfig
from iotid.fleet.models import Device
from iotid.fleet.runtime import FleetRuntime, RunningFleet
from iotid.host import tls as host_tls
from iotid.host.secureelement import SecureElement
from iotid.se.card import Card
from iotid.spec import firmware as fw_spec
from iotid.spec import mtls as mtls_spec
from iotid.spec import rotation as rot_spec
from iotid.spec.firmware import ImageVersion
from iotid.spec.manifest import verify_manifest
from iotid.transport.base import CardRemovedError, Connection
from iotid.transport.loopback import LoopbackConnection
from support.fleetworld import ROLLBACK_FLOOR, FleetWorld, WorldBatch, WorldCard, build_world

pytestmark = pytest.mark.slow

FRESH = "fresh"  # a batch whose cards never booted (no identity key yet)
FW_BODY = bytes(range(256)) * 16
FAST = DeviceConfig(telemetry_interval=0.0, backoff_initial=0.01, backoff_max=0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    base = tmp_path_factory.mktemp("device-app")
    world = build_world(base, {"p256-a": ("p256", 10)})
    # A batch personalised but never booted: the device application provisions it.
    create_batch(
        world.ceremony_dir,
        FRESH,
        "p256",
        world.shares[:2],
        rotation_authority=world.keys.authority.public_key(),
    )
    result = personalise_batch(
        world.ceremony_dir, FRESH, 1, base / f"line-{FRESH}", rollback_floor=ROLLBACK_FLOOR
    )
    data, sig = result.manifest_path.read_bytes(), result.signature_path.read_bytes()
    manifest = verify_manifest(data, sig, world.root)
    cards = [
        WorldCard(base / f"line-{FRESH}" / "cards" / f"{i:06d}", e.uid, FRESH)
        for i, e in enumerate(manifest.cards)
    ]
    world.batches[FRESH] = WorldBatch(FRESH, "p256", manifest, data, sig, cards)
    return world


class GatewayCounter:
    """Counts TCP connections the devices open to the gateway (every handshake needs one)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self._real = socket.create_connection

    def __call__(self, address: tuple[str, int], *a: Any, **kw: Any) -> socket.socket:
        if address[1] == self.port:
            self.count += 1
        return self._real(address, *a, **kw)


@dataclass
class Fleet:
    world: FleetWorld
    running: RunningFleet
    tmp: Path
    counter: GatewayCounter
    token: str

    @property
    def runtime(self) -> FleetRuntime:
        return self.running.runtime

    @property
    def gateway(self) -> str:
        host, port = self.running.gateway_address
        return f"{host}:{port}"

    def card(self, batch: str = "p256-a", index: int = 0) -> WorldCard:
        return self.world.batches[batch].cards[index].copy(self.tmp / f"card-{batch}-{index}")

    def app(self, open_se: Callable[[], SecureElement], name: str, **kw: Any) -> DeviceApp:
        kw.setdefault("config", FAST)
        return DeviceApp(
            open_se,
            self.running.api_url,
            gateway=self.gateway,
            state_dir=self.tmp / f"state-{name}",
            retry=RetryPolicy(attempts=2, base=0.01, cap=0.02),
            sleep=lambda _s: None,
            **kw,
        )

    def operator(self, method: str, path: str, body: Any = None) -> Any:
        response = httpx.request(
            method,
            self.running.api_url + path,
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def device(self, uid: str) -> Device:
        with self.runtime.db.transaction(write=False) as session:
            return session.execute(select(Device).where(Device.uid == uid)).scalar_one()

    def publish(self, name: str, counter: int, *, tamper: bool = False) -> str:
        store = open_store(self.world.ceremony_dir)
        line_key = self.world.ceremony_dir / BATCHES_DIR / "p256-a" / "line.key"
        store.unlock_operational(read_line_key(line_key))
        image = sign_mcuboot(
            FW_BODY,
            store.signer(FIRMWARE_KEY),
            version=ImageVersion(1, counter, 0, 0),
            security_counter=counter,
        )
        if tamper:
            image = image[:-20] + bytes([image[-20] ^ 1]) + image[-19:]  # the signature
        self.runtime.services.firmware.publish(name, image, None, actor="test")
        self.runtime.services.firmware.assign("default", name, actor="test")
        return str(ImageVersion(1, counter, 0, 0))

    def revoke(self, uid: str) -> None:
        self.runtime.services.revocation.revoke_device(uid, "key_compromise", actor="test")


@pytest.fixture
def fleet(world: FleetWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    config = FleetConfig(
        directory=world.fleet_dir,
        db_url=f"sqlite:///{tmp_path / 'fleet.sqlite3'}",
        api_port=0,
        gateway_port=0,
    )
    runtime = FleetRuntime(config)
    for batch in world.batches.values():
        runtime.services.devices.import_manifest(batch.manifest_bytes, batch.signature, actor="t")
    token = create_token(runtime.db, Role.OPERATOR, dt.timedelta(hours=1)).secret
    running = runtime.run_in_thread()
    counter = GatewayCounter(running.gateway_address[1])
    monkeypatch.setattr(host_tls.socket, "create_connection", counter)
    try:
        yield Fleet(world, running, tmp_path, counter, token)
    finally:
        running.stop()


# -- an SE that can be pulled out of its reader --------------------------------------------------
class Slot:
    """A reader slot holding one card (its state directory). ``pull()`` removes the card;
    ``pull_on(aid, ins)`` removes it as that command arrives (before the card runs it)."""

    def __init__(self, card: WorldCard) -> None:
        self.card = card
        self.present = True
        self.opened = 0
        self.trigger: tuple[bytes, int] | None = None

    def open(self) -> SecureElement:
        if not self.present:
            raise CardRemovedError("no card in the reader")
        self.opened += 1
        return SecureElement(Pluggable(self, LoopbackConnection(Card.open(self.card.path))))

    def pull(self) -> None:
        self.present = False

    def pull_on(self, aid: bytes, ins: int) -> None:
        self.trigger = (aid, ins)

    def plug(self) -> None:
        self.present, self.trigger = True, None


class Pluggable(Connection):
    def __init__(self, slot: Slot, inner: LoopbackConnection) -> None:
        self.slot = slot
        self.inner = inner
        self.selected = b""

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def transmit(self, apdu: bytes) -> bytes:
        slot = self.slot
        if apdu[1] == 0xA4:  # SELECT: remember the applet
            self.selected = apdu
        trigger = slot.trigger
        if trigger is not None and trigger[1] == apdu[1] and trigger[0] in self.selected:
            slot.pull()
        if not slot.present:
            raise CardRemovedError("the card was removed")
        return self.inner.transmit(apdu)

    def close(self) -> None:
        self.inner.close()


def card_state(card: WorldCard) -> tuple[int, bool, int]:
    """(identity epoch, rotation pending, firmware floor) read from the card itself."""
    se = card.se()
    try:
        rotation = se.rotation.state()
        return rotation.epoch, rotation.pending, se.firmware.state().floor
    finally:
        se.close()


# -- the whole life ------------------------------------------------------------------------------
def test_device_life_against_the_fleet(fleet: Fleet) -> None:
    card = fleet.card(FRESH)
    slot = Slot(card)
    staged_only = DeviceConfig(telemetry_interval=0.0, reboot_after_update=False)
    app = fleet.app(slot.open, "life", config=staged_only)
    assert app.status is DeviceStatus.NEW

    boot = app.boot()
    assert boot.provisioned_now and boot.enrolled_now and boot.uid == card.uid_hex
    assert (boot.epoch, app.status) == (1, DeviceStatus.ENROLLED)
    uid = card.uid_hex

    services = fleet.runtime.services
    services.commands.create(uid, b"open valve 3", actor="test")
    version = fleet.publish("app-1.5", counter=5)
    first = app.cycle()
    assert first.ok and first.status is DeviceStatus.RUNNING, first.error
    (reading,) = services.telemetry.list(uid)  # stored: the fleet verified the card's signature
    assert str(reading.id) == first.telemetry_id and json.loads(reading.payload)["seq"] == 1
    assert [c.plaintext for c in first.commands] == [b"open valve 3"]
    assert first.firmware is not None and first.firmware.applied and first.firmware.verdict.valid
    assert not first.rebooted and first.rotated is None
    assert app.state.get("firmware_pending")["version"] == version
    assert fleet.device(uid).firmware_version is None  # staged, not running yet

    rebooted = app.reboot()  # the bootloader starts the image; it confirms through the SE
    assert rebooted.firmware_confirmed == version and rebooted.firmware_version == version
    assert not rebooted.enrolled_now and not rebooted.provisioned_now
    assert fleet.device(uid).firmware_version == version  # the "applied" report arrived
    assert app.state.get("firmware_pending") is None

    again = app.cycle()
    assert again.ok and again.firmware is None and again.rotated is None  # nothing new
    assert fleet.device(uid).key_epoch == 1

    scheduled = fleet.operator("POST", "/v1/rotation/schedule", {"uids": [uid]})
    assert scheduled == {"scheduled": 1, "uids": [uid]}
    rotated = app.cycle()
    assert rotated.ok and rotated.rotated is not None and rotated.rotated.epoch == 2
    device = fleet.device(uid)
    assert (device.key_epoch, device.rotation_due_at) == (2, None)
    after = app.cycle()
    assert after.ok and after.rotated is None and len(services.telemetry.list(uid)) == 4

    fleet.revoke(uid)
    deadline = time.monotonic() + 15
    while app.status is not DeviceStatus.REVOKED and time.monotonic() < deadline:
        app.cycle()  # until the follower has the event
    assert app.status is DeviceStatus.REVOKED
    report = app.state.get("revoked_report")
    assert report["epoch"] == 2 and report["reason"]
    app.close()
    assert card_state(card) == (2, False, 5)  # rotated, firmware floor raised

    # No retry storm: nothing reaches the gateway any more, now or after a restart.
    before = fleet.counter.count
    assert app.cycle().status is DeviceStatus.REVOKED
    with pytest.raises(DeviceRevoked):
        app.send_telemetry()
    stop = threading.Event()
    assert app.run(stop, cycles=5).cycles == 1
    restarted = fleet.app(slot.open, "life")
    assert restarted.status is DeviceStatus.REVOKED
    with pytest.raises(DeviceRevoked):
        restarted.boot()
    assert fleet.counter.count == before
    assert slot.opened == 2  # boot, reboot; nothing after the revocation


def test_rotation_waits_for_the_schedule(fleet: Fleet) -> None:
    card = fleet.card(index=1)
    app = fleet.app(Slot(card).open, "sched")
    assert app.rotate_if_due() is None
    fleet.operator("POST", "/v1/rotation/schedule", {"batch": "p256-a"})
    info = app.rotate_if_due()
    assert info is not None and info.epoch == 2
    assert app.rotate_if_due() is None
    app.close()


def test_tampered_firmware_is_refused_once(fleet: Fleet) -> None:
    card = fleet.card(index=2)
    app = fleet.app(Slot(card).open, "tamper")
    fleet.publish("tampered", counter=7, tamper=True)
    outcome = app.update_firmware()
    assert outcome is not None and not outcome.applied and not outcome.verdict.valid
    assert app.update_firmware() is None  # remembered: not downloaded again
    assert app.state.get("firmware_version") is None
    app.close()
    assert card_state(card)[2] == ROLLBACK_FLOOR


# -- the SE removed ------------------------------------------------------------------------------
def test_se_removed_mid_run_fails_safe_and_recovers(fleet: Fleet) -> None:
    card = fleet.card(index=3)
    slot = Slot(card)
    app = fleet.app(slot.open, "unplug")
    assert app.cycle().ok
    uid = card.uid_hex

    # Between cycles.
    slot.pull()
    for _ in range(2):
        report = app.cycle()
        assert report.status is DeviceStatus.SE_UNAVAILABLE and report.error
    with pytest.raises(SecureElementUnavailable):
        app.send_telemetry()
    slot.plug()
    assert app.cycle().status is DeviceStatus.RUNNING

    # During the TLS handshake (the card signs it): not mistaken for a revocation.
    slot.pull_on(mtls_spec.AID, mtls_spec.Ins.SIGN_DIGEST)
    assert app.cycle().status is DeviceStatus.SE_UNAVAILABLE
    assert not app.state.revoked
    slot.plug()
    assert app.cycle().status is DeviceStatus.RUNNING

    # Mid firmware stream: nothing recorded; the stream starts over when the card is back.
    version = fleet.publish("app-1.6", counter=6)
    slot.pull_on(fw_spec.AID, fw_spec.Ins.UPDATE)
    assert app.cycle().status is DeviceStatus.SE_UNAVAILABLE
    assert app.state.get("firmware_pending") is None and app.state.get("firmware_refused") is None
    slot.plug()
    report = app.cycle()
    assert report.ok and report.firmware is not None and report.firmware.applied, report.error
    assert report.rebooted and app.state.get("firmware_version") == version
    assert fleet.device(uid).firmware_version == version

    # Mid rotation, as COMMIT arrives: the journal resumes it.
    fleet.operator("POST", "/v1/rotation/schedule", {"uids": [uid]})
    slot.pull_on(rot_spec.AID, rot_spec.Ins.COMMIT)
    assert app.cycle().status is DeviceStatus.SE_UNAVAILABLE
    assert app.state.rotation is not None and "answer" in app.state.rotation
    slot.plug()
    report = app.cycle()
    assert report.ok and report.rotated is not None and report.rotated.epoch == 2, report.error
    assert fleet.device(uid).key_epoch == 2 and app.status is DeviceStatus.RUNNING
    app.close()
    assert card_state(card) == (2, False, 6)


# -- many devices --------------------------------------------------------------------------------
def test_swarm_of_eight(fleet: Fleet) -> None:
    cards = [fleet.card(index=i) for i in range(2, 10)]
    apps = [fleet.app(Slot(c).open, f"swarm-{i}") for i, c in enumerate(cards)]
    swarm = Swarm(apps, workers=4)
    done: list[tuple[int, bool]] = []
    boot = swarm.phase("boot", DeviceApp.boot, on_done=lambda i, ok: done.append((i, ok)))
    assert (boot.ok, boot.failed, len(boot.durations)) == (8, 0, 8), boot.errors
    assert sorted(done) == [(i, True) for i in range(8)]
    assert [r.uid for r in boot.results] == [c.uid_hex for c in cards]  # type: ignore[attr-defined]
    fleet.revoke(cards[0].uid_hex)
    deadline = time.monotonic() + 15
    while apps[0].status is not DeviceStatus.REVOKED and time.monotonic() < deadline:
        apps[0].cycle()
    cycle = swarm.phase("cycle", DeviceApp.cycle)
    assert cycle.ok == 8  # cycle() never raises
    statuses = [r.status for r in cycle.results]  # type: ignore[attr-defined]
    assert statuses == [DeviceStatus.REVOKED] + [DeviceStatus.RUNNING] * 7
    telemetry = swarm.phase("telemetry", lambda app: app.send_telemetry({"t": 1}))
    assert (telemetry.ok, telemetry.failed) == (7, 1)
    assert "DeviceRevoked" in telemetry.errors[cards[0].uid_hex]
    swarm.close()


# -- the CLI -------------------------------------------------------------------------------------
def test_cli_device_run(fleet: Fleet) -> None:
    card = fleet.card(index=4)
    state = fleet.tmp / "cli-state"
    args = [
        "device", "run", "--se", str(card.path), "--fleet", fleet.running.api_url,
        "--state-dir", str(state), "--interval", "0", "--cycles", "2",
    ]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(cli_app, [*args, "--gateway", fleet.gateway])
    assert result.exit_code == 0, result.output
    assert result.output.count("running") >= 2 and "telemetry" in result.output
    fleet.revoke(card.uid_hex)
    deadline = time.monotonic() + 15
    while result.exit_code != 3 and time.monotonic() < deadline:
        result = runner.invoke(cli_app, args)  # the gateway address is remembered
    assert result.exit_code == 3, result.output
    assert "revoked" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli_app, [*args[:3], str(fleet.tmp / "nowhere"), *args[4:]])
    assert result.exit_code == 2 and "not a card state directory" in result.output


def test_cli_device_swarm(fleet: Fleet) -> None:
    cards = fleet.tmp / "swarm-cards"
    chosen = [fleet.world.batches["p256-a"].cards[i].copy(cards / f"{i:06d}") for i in (5, 6, 7)]
    args = [
        "device", "swarm", "--cards", str(cards), "--fleet", fleet.running.api_url,
        "--gateway", fleet.gateway, "--workers", "3", "--cycles", "2",
    ]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    assert "3 devices" in result.output and "running 3" in result.output
    for card in chosen:  # every card enrolled and its state kept beside it
        assert fleet.device(card.uid_hex).state == "active"
        assert (cards / f"{card.path.name}.fleet").is_dir()
    fleet.revoke(chosen[0].uid_hex)
    deadline = time.monotonic() + 15
    while result.exit_code != 3 and time.monotonic() < deadline:
        result = runner.invoke(cli_app, args)
    assert result.exit_code == 3, result.output
    assert "revoked 1" in result.output and "Traceback" not in result.output
    (fleet.tmp / "empty").mkdir()
    empty = runner.invoke(cli_app, [*args[:3], str(fleet.tmp / "empty"), *args[4:]])
    assert empty.exit_code == 2 and "no card state directories" in empty.output

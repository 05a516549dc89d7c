"""kill -9 of a real ``iotid fleet serve`` at every crash point of enrollment and rotation loses
nothing: after a restart the device's own retry converges to ONE consistent registry state.

On SQLite and PostgreSQL, the fleet runs as a subprocess with ``IOTID_FLEET_CRASH_AT=<point>``
(``iotid.fleet.faults``); a real device (``FleetClient`` over a card the factory line
personalised, from ``support.fleetworld``) drives it into the crash; the process must have died
by SIGKILL, leaving exactly what the crash point says was (or was not) committed. The fleet
restarts on the same ports and the device reboots (a new client over the same card and state
directory) and does what a device does: enroll again, or ``GatewaySession.rotate()``, which
resumes from its journal. The crash points are met in chains (:data:`CHAINS`): each restart
arms the next point, so the device's recovery from one crash runs into the next one, and the
last restart, without a crash point, lets it finish. Then the registry must hold exactly one
consistent state: the card's certificate is a live registry certificate of the device's current
key and epoch (the newest one it has), the card's epoch is the registry's, no key other than
the current one is vouched for by a live certificate, no rotation is left pending, the device
is active, the audit chain verifies and ``trace`` walks to the ceremony; the device's telemetry
verifies at the gateway.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from sqlalchemy.engine import URL

from iotid.device import FleetClient, FleetUnavailable, RetryPolicy
from iotid.fleet.audit.service import AuditService
from iotid.fleet.db import Database
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.faults import CRASH_ENV, CRASH_POINTS
from iotid.fleet.issuing import serial_hex, spki_der, spki_sha256
from iotid.fleet.models import (
    AuditLog,
    Certificate,
    Device,
    DeviceState,
    Rotation,
    RotationState,
)
from support.fleetproc import FleetProcess, start_fleet
from support.fleetworld import FleetWorld, WorldCard, build_world
from unit.fleet.conftest import (  # noqa: F401 - the fleet fixtures
    empty_fleet_db,
    fleet_db,
    fleet_db_url,
    postgres_url,
)

pytestmark = pytest.mark.slow

BATCH = "k9"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(tmp_path_factory.mktemp("kill9"), {BATCH: ("p256", 1)})


@dataclass
class Registry:
    """What the registry says about one device (read in one transaction)."""

    device: Device
    certificates: list[Certificate]
    rotations: list[Rotation]


def _registry(db: Database, uid: str) -> Registry:
    with db.transaction(write=False) as session:
        device = session.scalars(select(Device).where(Device.uid == uid)).one()
        certs = session.scalars(
            select(Certificate).where(Certificate.device_id == device.id).order_by(Certificate.id)
        ).all()
        rotations = session.scalars(select(Rotation).where(Rotation.device_id == device.id)).all()
        session.expunge_all()
        return Registry(device, list(certs), list(rotations))


@dataclass
class Rig:
    world: FleetWorld
    db: Database
    db_url: str
    card: WorldCard
    tmp: Path

    def client(self, fleet: FleetProcess) -> FleetClient:
        """The device after a (re)boot: a new client over the same card and state directory."""
        return FleetClient(
            self.card.se(),
            fleet.api_url,
            gateway=fleet.gateway_address,
            state_dir=self.tmp / "device-state",
            retry=RetryPolicy(attempts=3, base=0.01, cap=0.05),
        )


@pytest.fixture
def rig(
    world: FleetWorld,
    fleet_db: Database,  # noqa: F811
    fleet_db_url: URL,  # noqa: F811
    tmp_path: Path,
) -> Rig:
    batch = world.batches[BATCH]
    DeviceService(fleet_db, world.root).import_manifest(
        batch.manifest_bytes, batch.signature, actor="test"
    )
    card = batch.cards[0].copy(tmp_path / "card")
    return Rig(world, fleet_db, fleet_db_url.render_as_string(hide_password=False), card, tmp_path)


@pytest.fixture
def processes() -> Iterator[list[FleetProcess]]:
    """Every fleet process a test starts; each is killed at the end (nothing left to check)."""
    started: list[FleetProcess] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()


def _act(client: FleetClient, flow: str) -> int:
    """What the device does (after every boot, until it succeeds); the epoch it reached."""
    if flow == "enroll" or client.state.get("uid") is None:
        info = client.enroll()
        if flow == "enroll":
            return info.epoch
    with client.gateway() as gw:
        return gw.rotate().epoch  # resumes from the journal after a crash


def _check_left_behind(rig: Rig, client: FleetClient, point: str) -> None:
    """The crash happened where its name says: before the commit nothing, after it everything."""
    reg = _registry(rig.db, rig.card.uid_hex)
    card = client.se.rotation.state()
    pending = [r for r in reg.rotations if r.state == RotationState.PENDING.value]
    if point == "enroll.before_commit":
        assert reg.device.state == DeviceState.MANUFACTURED and reg.certificates == []
    elif point == "enroll.after_commit":
        assert reg.device.state == DeviceState.ENROLLED and len(reg.certificates) == 1
    elif point == "rotate.prepare.before_commit":
        assert reg.rotations == [] and reg.device.key_epoch == 1
        assert card.pending and client.state.rotation is not None
        assert "answer" not in client.state.rotation
    elif point == "rotate.prepare.after_commit":
        assert len(pending) == 1 and reg.device.state == DeviceState.ROTATING
        assert card.pending and "answer" not in (client.state.rotation or {})
    elif point == "rotate.complete.before_commit":
        assert len(pending) == 1 and reg.device.key_epoch == 1
        assert card.epoch == 2 and not card.pending  # the card COMMITted before reconnecting
    elif point == "rotate.complete.after_commit":
        assert pending == [] and reg.device.key_epoch == 2
        assert card.epoch == 2 and client.state.rotation is not None  # never answered
    else:  # pragma: no cover - a new crash point needs its expectations here
        pytest.fail(f"no expectation for crash point {point}")


def assert_consistent(rig: Rig, client: FleetClient, epoch: int) -> None:
    """One consistent state across card, device state and registry (module docstring)."""
    se = client.se
    card = se.rotation.state()
    leaf = se.mtls.chain()[0]
    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    spki = spki_der(key)
    assert (card.epoch, card.pending) == (epoch, False)
    assert client.state.rotation is None and client.state.get("epoch") == epoch
    with client.gateway() as gw:  # the device works: whoami, verified telemetry
        me = gw.whoami()
        assert (me.state, me.epoch) == ("active", epoch)
        assert gw.send_telemetry(b'{"after": "restart"}')
    reg = _registry(rig.db, rig.card.uid_hex)
    device = reg.device
    assert device.state == DeviceState.ACTIVE
    assert device.key_epoch == card.epoch
    assert device.identity_spki == spki
    serial = serial_hex(leaf.serial_number)
    assert client.state.get("serial") == serial
    matching = [c for c in reg.certificates if c.serial == serial]
    assert len(matching) == 1, "exactly one registry certificate is the card's"
    mine = matching[0]
    assert mine.der == leaf.public_bytes(serialization.Encoding.DER)
    assert mine.revoked_at is None and mine.key_epoch == epoch
    assert mine.spki_sha256 == spki_sha256(spki)
    live = [c for c in reg.certificates if c.revoked_at is None]
    assert live[-1].serial == serial, "the card holds the newest live certificate"
    assert {(c.key_epoch, c.spki_sha256) for c in live} == {(epoch, spki_sha256(spki))}, (
        "a live certificate vouches for a key that is not the current one"
    )
    assert [r for r in reg.rotations if r.state == RotationState.PENDING.value] == []
    committed = [r for r in reg.rotations if r.state == RotationState.COMMITTED.value]
    assert [r.to_epoch for r in committed] == list(range(2, epoch + 1))
    with rig.db.transaction(write=False) as session:
        assert AuditLog(session).verify() is not None
    trace = AuditService(rig.db, rig.world.keys).trace(
        rig.card.uid_hex, ceremony_record=rig.world.ceremony_dir / "ceremony.jsonl"
    )
    assert trace.ok, trace


#: The crash points in the order one device meets them: each restart arms the next point, so
#: after the first crash the device's RECOVERY runs into the next one (a crash while recovering
#: from a crash), and the last restart lets it finish. Fewer fleet starts than one test per point.
CHAINS = {
    "enroll": ("enroll.before_commit", "enroll.after_commit"),
    "rotate": (
        "rotate.prepare.before_commit",
        "rotate.prepare.after_commit",
        "rotate.complete.before_commit",
        "rotate.complete.after_commit",
    ),
}
#: The epoch the device ends at after each chain.
END_EPOCH = {"enroll": 1, "rotate": 2}


def test_the_chains_cover_every_crash_point() -> None:
    assert sorted(p for chain in CHAINS.values() for p in chain) == sorted(CRASH_POINTS)


@pytest.mark.parametrize("flow", sorted(CHAINS))
def test_kill9_at_every_crash_point_converges(
    rig: Rig, processes: list[FleetProcess], flow: str
) -> None:
    fleet: FleetProcess | None = None
    for point in CHAINS[flow]:
        armed = {CRASH_ENV: point}
        if fleet is None:
            fleet = start_fleet(rig.world.fleet_dir, rig.db_url, rig.tmp / "fleet.log", env=armed)
        else:
            fleet = fleet.restart(env=armed)
        processes.append(fleet)
        client = rig.client(fleet)
        with pytest.raises(FleetUnavailable):
            _act(client, flow)
        assert fleet.wait_exit() == -signal.SIGKILL, f"{point}: {fleet.log()}"
        _check_left_behind(rig, client, point)
        client.close()
        client.se.close()  # the device reboots too

    assert fleet is not None
    fleet = fleet.restart()  # without a crash point
    processes.append(fleet)
    client = rig.client(fleet)
    try:
        epoch = _act(client, flow)
        assert epoch == END_EPOCH[flow]
        assert_consistent(rig, client, epoch)
    finally:
        client.close()


@pytest.mark.parametrize("fleet_db_url", ["sqlite"], indirect=True)  # the device's logic
def test_a_crash_looping_fleet_does_not_make_a_device_believe_it_is_revoked(
    rig: Rig, processes: list[FleetProcess]
) -> None:
    """Two crashes in a row, each cutting a FRESH connection right after the handshake (what a
    revoked device also sees from the gateway), within one gateway session that lives through
    the fleet's restart: the device must not conclude it is revoked (a terminal state), and
    finishes once the fleet is healthy. (It did conclude so before ``JsonChannel`` reset its
    refusal count when the gateway could not be reached at all in between.)"""
    armed = {CRASH_ENV: "rotate.complete.before_commit"}
    fleet = start_fleet(rig.world.fleet_dir, rig.db_url, rig.tmp / "fleet.log", env=armed)
    processes.append(fleet)
    client = rig.client(fleet)
    client.enroll()
    with client.gateway() as gw:
        for again in (True, False):  # the same crash after the restart: a crash loop
            with pytest.raises(FleetUnavailable):
                gw.rotate()
            assert fleet.wait_exit() == -signal.SIGKILL
            assert not client.state.revoked
            fleet = fleet.restart(env=armed if again else None)
            processes.append(fleet)
        assert gw.rotate().epoch == 2
    assert_consistent(rig, client, 2)

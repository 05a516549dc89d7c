"""The firmware slice on SQLite and PostgreSQL: publish (kind detection, malformed, duplicates),
per-group assignment, distribution over the gateway routes, reports and rollout counts; and the
end-to-end property: an image signed with the factory's firmware key and distributed by the fleet
is VALID on the device's secure element, a tampered one INVALID.

Real pieces: a fleetworld (ceremony, batch, personalised cards whose firmware applet trusts the
factory's firmware key), images signed by ``iotid.factory.firmware`` with the key from the
factory key store, and one image signed by upstream ``imgtool``.
"""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotid.factory.batch import BATCHES_DIR, FIRMWARE_KEY
from iotid.factory.firmware import sign_mcuboot, sign_raw
from iotid.factory.keystore import Signer
from iotid.factory.line import read_line_key
from iotid.factory.stores import open_store
from iotid.fleet.db import Database
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.errors import Conflict, InvalidInput, NotFound
from iotid.fleet.firmware import FirmwareService
from iotid.fleet.firmware import service as firmware_service
from iotid.fleet.firmware.gateway import register
from iotid.fleet.gateway.routing import DeviceContext, GatewayRequest, Routes
from iotid.fleet.models import AuditEntry, Device
from iotid.spec.firmware import ImageVersion, Reason
from support.fleetworld import FleetWorld, WorldCard, build_world

BODY = bytes(range(256)) * 40
V1 = ImageVersion(1, 2, 3, 4)
ADMIN = "token:1"
IMGTOOL = Path(sys.executable).with_name("imgtool")


@dataclass
class Firmware:
    world: FleetWorld
    signer: Signer
    card: WorldCard  # a private copy: verifying records the last verdict in the card's NVM
    mcuboot: bytes
    raw: bytes
    raw_signature: bytes

    @property
    def uids(self) -> list[str]:
        return [c.uid_hex for c in self.world.batches["fw"].cards]


@pytest.fixture(scope="module")
def fw(tmp_path_factory: pytest.TempPathFactory) -> Firmware:
    base = tmp_path_factory.mktemp("fw-world")
    world = build_world(base, {"fw": ("p256", 3)})
    store = open_store(world.ceremony_dir)
    store.unlock_operational(read_line_key(world.ceremony_dir / BATCHES_DIR / "fw" / "line.key"))
    signer = store.signer(FIRMWARE_KEY)
    card = world.batches["fw"].cards[0].copy(base / "card0")
    return Firmware(
        world,
        signer,
        card,
        sign_mcuboot(BODY, signer, version=V1, security_counter=2),
        BODY + b"raw",
        sign_raw(BODY + b"raw", signer, version=ImageVersion(2, 0, 0), security_counter=3),
    )


@pytest.fixture
def service(fleet_db: Database, fw: Firmware) -> FirmwareService:
    batch = fw.world.batches["fw"]
    DeviceService(fleet_db, fw.world.root).import_manifest(
        batch.manifest_bytes, batch.signature, actor=ADMIN
    )
    return FirmwareService(fleet_db)


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def _actions(db: Database) -> list[str]:
    with db.transaction(write=False) as session:
        return [e.action for e in session.query(AuditEntry).order_by(AuditEntry.seq)]


# -- publish ---------------------------------------------------------------------------------------
def test_publish_detects_kinds_and_is_idempotent(service: FirmwareService, fw: Firmware) -> None:
    first = service.publish("app-1.2.3", fw.mcuboot, None, actor=ADMIN)
    assert first.created
    assert (first.release.kind, first.release.version) == ("mcuboot", "1.2.3+4")
    assert first.release.size == len(fw.mcuboot)
    again = service.publish("app-1.2.3", fw.mcuboot, None, actor=ADMIN)
    assert not again.created and again.release == first.release
    raw = service.publish("app-raw", fw.raw, fw.raw_signature, actor=ADMIN)
    assert (raw.release.kind, raw.release.version) == ("raw", "2.0.0+0")
    assert [r.name for r in service.releases()] == ["app-1.2.3", "app-raw"]
    assert service.image("app-raw") == fw.raw
    assert service.signature("app-raw") == fw.raw_signature
    assert service.signature("app-1.2.3") is None
    assert _actions(service._db).count("firmware.published") == 2


def test_publish_refuses_conflicts_and_malformed_images(
    service: FirmwareService, fw: Firmware, monkeypatch: pytest.MonkeyPatch
) -> None:
    service.publish("app", fw.mcuboot, None, actor=ADMIN)
    other = sign_mcuboot(BODY, fw.signer, version=V1, security_counter=9)
    with pytest.raises(Conflict) as conflict:
        service.publish("app", other, None, actor=ADMIN)
    assert conflict.value.code == "firmware.conflict"
    cases = {
        "truncated": (fw.mcuboot[:-10], None, "firmware.malformed"),
        "corrupted body": (_flip(fw.mcuboot, 0x200 + 5), None, "firmware.malformed"),
        "raw without signature": (fw.raw, None, "firmware.signature_required"),
        "raw, bare signature": (fw.raw, b"\x30\x44" + bytes(68), "firmware.bad_signature_file"),
        "mcuboot with a signature": (fw.mcuboot, fw.raw_signature, "firmware.unexpected_signature"),
        "empty": (b"", fw.raw_signature, "firmware.empty"),
    }  # fmt: skip
    for what, (image, signature, code) in cases.items():
        with pytest.raises(InvalidInput) as refused:
            service.publish("bad", image, signature, actor=ADMIN)
        assert refused.value.code == code, what
    with pytest.raises(InvalidInput, match=r"firmware\.bad_name"):
        service.publish("../etc", fw.raw, fw.raw_signature, actor=ADMIN)
    monkeypatch.setattr(firmware_service, "MAX_IMAGE_SIZE", len(fw.raw) - 1)
    with pytest.raises(InvalidInput, match=r"firmware\.too_large"):
        service.publish("big", fw.raw, fw.raw_signature, actor=ADMIN)
    assert [r.name for r in service.releases()] == ["app"]


def test_imgtool_signed_image_is_published_with_its_header_version(
    service: FirmwareService, fw: Firmware, tmp_path: Path
) -> None:
    key, src, out = tmp_path / "k.pem", tmp_path / "app.bin", tmp_path / "app.signed.bin"
    src.write_bytes(BODY)
    run = [str(IMGTOOL)]
    assert (
        subprocess.run([*run, "keygen", "-k", key, "-t", "ecdsa-p256"], check=False).returncode == 0
    )
    signed = subprocess.run(
        [*run, "sign", "--key", key, "--header-size", "0x200", "--align", "8",
         "--version", "3.1.4+15", "--slot-size", "0x100000", "--pad-header", src, out],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    release = service.publish("imgtool", out.read_bytes(), None, actor=ADMIN).release
    assert (release.kind, release.version) == ("mcuboot", "3.1.4+15")


# -- rollout and distribution ---------------------------------------------------------------------
def _ctx(uid: str, fw: Firmware) -> DeviceContext:
    return DeviceContext(uid=uid, certificate=fw.world.root, serial="1")


def _get(routes: Routes, ctx: DeviceContext, path: str, body: bytes = b"") -> tuple[int, bytes]:
    method = "POST" if path.endswith("/report") else "GET"
    handler, params = routes.resolve(method, path)
    response = handler(ctx, GatewayRequest(method, path, body=body, params=params))
    return response.status, response.body


def test_group_assignment_and_device_downloads(service: FirmwareService, fw: Firmware) -> None:
    routes = Routes()
    register(routes, service)
    a, b, c = fw.uids
    service.publish("app", fw.mcuboot, None, actor=ADMIN)
    service.publish("raw", fw.raw, fw.raw_signature, actor=ADMIN)
    assert service.release_for(a) is None
    assert _get(routes, _ctx(a, fw), "/v1/device/firmware") == (200, b'{"release":null}')
    assert service.set_group(a, "canary", actor=ADMIN) == "default"
    assert service.set_group(b, "canary", actor=ADMIN) == "default"
    service.assign("canary", "app", actor=ADMIN)
    service.assign("default", "raw", actor=ADMIN)
    with pytest.raises(InvalidInput):
        service.set_group(c, "no/slash", actor=ADMIN)
    with pytest.raises(NotFound):
        service.assign("canary", "missing", actor=ADMIN)
    with pytest.raises(NotFound):
        service.set_group("00", "canary", actor=ADMIN)

    status, body = _get(routes, _ctx(a, fw), "/v1/device/firmware")
    assert status == 200 and b'"name":"app"' in body and b'"kind":"mcuboot"' in body
    assert _get(routes, _ctx(a, fw), "/v1/device/firmware/app") == (200, fw.mcuboot)
    # Not the caller's release: the same 404 as a release that does not exist.
    for path in ("/v1/device/firmware/raw", "/v1/device/firmware/raw/signature",
                 "/v1/device/firmware/nope", "/v1/device/firmware/app/signature"):  # fmt: skip
        with pytest.raises(NotFound):
            _get(routes, _ctx(a, fw), path)
    assert _get(routes, _ctx(c, fw), "/v1/device/firmware/raw/signature") == (
        200,
        fw.raw_signature,
    )
    with pytest.raises(NotFound):
        _get(routes, _ctx(c, fw), "/v1/device/firmware/app")
    # Re-assigning the same release is not a new event.
    service.assign("canary", "app", actor=ADMIN)
    assert _actions(service._db).count("firmware.assigned") == 2
    assert _actions(service._db).count("device.group_changed") == 2


def test_reports_and_rollout_counts(service: FirmwareService, fw: Firmware) -> None:
    routes = Routes()
    register(routes, service)
    a, b, c = fw.uids
    service.publish("app", fw.mcuboot, None, actor=ADMIN)
    for uid in (a, b):
        service.set_group(uid, "canary", actor=ADMIN)
    service.assign("canary", "app", actor=ADMIN)
    report = b'{"version":"1.2.3+4","verdict":"%s"}'
    assert _get(routes, _ctx(a, fw), "/v1/device/firmware/report", report % b"valid")[0] == 200
    assert _get(routes, _ctx(a, fw), "/v1/device/firmware/report", report % b"applied")[0] == 200
    _get(routes, _ctx(b, fw), "/v1/device/firmware/report", report % b"invalid")
    with pytest.raises(InvalidInput):
        _get(routes, _ctx(b, fw), "/v1/device/firmware/report", report % b"maybe")
    with pytest.raises(InvalidInput):
        _get(
            routes, _ctx(b, fw), "/v1/device/firmware/report", b'{"version":"x","verdict":"valid"}'
        )
    rollout = {g.group: g for g in service.rollout()}
    canary, default = rollout["canary"], rollout["default"]
    assert (canary.release, canary.version, canary.devices) == ("app", "1.2.3+4", 2)
    assert (canary.reported_version_count, canary.valid, canary.invalid) == (1, 1, 1)
    assert (default.release, default.devices, default.reported_version_count) == (None, 1, 0)
    with service._db.transaction(write=False) as session:
        versions = {d.uid: d.firmware_version for d in session.query(Device)}
    assert versions == {a: "1.2.3+4", b: None, c: None}
    # Only 'invalid' and 'applied' are audited (telemetry volume).
    assert _actions(service._db).count("firmware.reported") == 2


# -- the secure element's verdict on what the fleet distributes -----------------------------------
def test_card_validates_the_distributed_images(service: FirmwareService, fw: Firmware) -> None:
    routes = Routes()
    register(routes, service)
    uid = fw.card.uid_hex
    service.publish("app", fw.mcuboot, None, actor=ADMIN)
    service.publish("raw", fw.raw, fw.raw_signature, actor=ADMIN)
    # Structurally sound, so the fleet publishes them; only the card can tell.
    part = fw.mcuboot[:-20]
    forged = part + bytes([fw.mcuboot[-20] ^ 0x01]) + fw.mcuboot[-19:]
    service.publish("forged", forged, None, actor=ADMIN)
    service.publish("raw-tampered", _flip(fw.raw, 100), fw.raw_signature, actor=ADMIN)
    se = fw.card.se()
    try:
        service.assign("default", "app", actor=ADMIN)
        image = _get(routes, _ctx(uid, fw), "/v1/device/firmware/app")[1]
        verdict = se.verify_firmware(io.BytesIO(image))
        assert verdict.valid, verdict
        assert (verdict.version, verdict.security_counter) == (V1, 2)

        service.assign("default", "raw", actor=ADMIN)
        image = _get(routes, _ctx(uid, fw), "/v1/device/firmware/raw")[1]
        signature = _get(routes, _ctx(uid, fw), "/v1/device/firmware/raw/signature")[1]
        assert se.verify_firmware(io.BytesIO(image), signature=signature).valid

        service.assign("default", "forged", actor=ADMIN)
        image = _get(routes, _ctx(uid, fw), "/v1/device/firmware/forged")[1]
        verdict = se.verify_firmware(io.BytesIO(image))
        assert not verdict.valid and verdict.code is Reason.BAD_SIGNATURE

        service.assign("default", "raw-tampered", actor=ADMIN)
        image = _get(routes, _ctx(uid, fw), "/v1/device/firmware/raw-tampered")[1]
        signature = _get(routes, _ctx(uid, fw), "/v1/device/firmware/raw-tampered/signature")[1]
        verdict = se.verify_firmware(io.BytesIO(image), signature=signature)
        assert not verdict.valid and verdict.code is Reason.BAD_SIGNATURE
    finally:
        se.close()


def test_release_of_unknown_device(service: FirmwareService) -> None:
    with pytest.raises(NotFound):
        service.release_for("0102")
    with pytest.raises(NotFound):
        service.report("0102", "1.0.0", "applied")

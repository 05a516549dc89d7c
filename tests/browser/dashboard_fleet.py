"""A populated fleet for the dashboard tests (unit and browser), made by the production code.

:func:`firmware_signer` opens the ceremony's key store the way the factory does and returns its
firmware signer; :func:`populate` imports every batch of a :class:`FleetWorld`, enrolls the first
``enroll`` cards of each through the real :class:`EnrollmentService` (nonce, card quote, chain
walk, certificate), stores card-signed JSON telemetry through :class:`TelemetryService`, and,
given a signer, publishes a signed MCUboot release, assigns it to the ``default`` group and has
the first device report it applied. Nothing here signs anything itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from iotid.factory.batch import BATCHES_DIR, FIRMWARE_KEY
from iotid.factory.firmware import sign_mcuboot
from iotid.factory.keystore import Signer
from iotid.factory.line import read_line_key
from iotid.factory.stores import open_store
from iotid.fleet.db import Database
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.enrollment.service import EnrollmentResult, EnrollmentService
from iotid.fleet.firmware import FirmwareService
from iotid.fleet.gateway.routing import DeviceContext
from iotid.fleet.issuing import FleetKeys
from iotid.fleet.models import utcnow
from iotid.fleet.telemetry import TelemetryService
from iotid.spec.firmware import ImageVersion
from support.fleetworld import FleetWorld, WorldCard

RELEASE = "fw-1.2.3"
VERSION = ImageVersion(1, 2, 3, 0)
_SIGN_AS = {"p256": ("sha256", "ecdsa"), "p384": ("sha384", "ecdsa")}


@dataclass
class Populated:
    enrolled: dict[str, EnrollmentResult] = field(default_factory=dict)
    manufactured: list[str] = field(default_factory=list)
    telemetry: dict[str, list[int]] = field(default_factory=dict)


def firmware_signer(world: FleetWorld, batch: str) -> Signer:
    store = open_store(world.ceremony_dir)
    store.unlock_operational(read_line_key(world.ceremony_dir / BATCHES_DIR / batch / "line.key"))
    return store.signer(FIRMWARE_KEY)


def card_sign(card: WorldCard, alg: str, payload: bytes) -> bytes:
    hash_name, scheme = _SIGN_AS[alg]
    return card.se().mtls.sign_digest(hashlib.new(hash_name, payload).digest(), hash_name, scheme)


def send_telemetry(
    db: Database, card: WorldCard, alg: str, result: EnrollmentResult, doc: object
) -> int:
    payload = json.dumps(doc).encode()
    ctx = DeviceContext(result.uid, result.certificate, result.serial)
    return TelemetryService(db).accept(ctx, payload, card_sign(card, alg, payload))


def populate(
    db: Database,
    world: FleetWorld,
    keys: FleetKeys | None = None,
    *,
    enroll: int = 2,
    telemetry: int = 3,
    signer: Signer | None = None,
) -> Populated:
    devices = DeviceService(db, world.root)
    enrollment = EnrollmentService(db, keys or world.keys, utcnow)
    out = Populated()
    for batch in world.batches.values():
        devices.import_manifest(batch.manifest_bytes, batch.signature, actor="token:0")
        for i, card in enumerate(batch.cards):
            if i >= enroll:
                out.manufactured.append(card.uid_hex)
                continue
            nonce, _ = enrollment.new_nonce()
            result = enrollment.enroll(card.se().attestation.attest(nonce))
            out.enrolled[result.uid] = result
            out.telemetry[result.uid] = [
                send_telemetry(
                    db, card, batch.alg, result, {"temp_c": 20.5 + n, "rssi": -60 - n, "seq": n}
                )
                for n in range(telemetry)
            ]
    if signer is not None:
        firmware = FirmwareService(db)
        image = sign_mcuboot(bytes(range(256)) * 8, signer, version=VERSION, security_counter=2)
        firmware.publish(RELEASE, image, None, actor="token:0")
        firmware.assign("default", RELEASE, actor="token:0")
        first = next(iter(out.enrolled))
        firmware.report(first, "1.2.3", "applied")
    return out

"""The demo's factory: ceremony, the fleet's keys, one batch, the personalisation line, firmware.

Scope: :func:`run_ceremony` (a 2-of-3 key ceremony: issuance root with a hash-chained record),
:func:`create_fleet` (``iotid fleet init``'s work: the fleet's issuing CA certified by the root
with two custodians present, the root CRL, ``fleet.json`` with the ports the demo picked),
:func:`make_batch` (a P-256 batch that trusts the fleet's rotation authority, N emulated cards
personalised over SCP03 by the factory line with per-card progress, the signed manifest checked
against the root, the GP test keys refused on a personalised card) and :func:`sign_firmware`
(MCUboot and raw images signed by the factory's firmware key, unlocked with the batch's line
key, each signature recorded in the ceremony record).

The demo is the one place that makes emulated cards for devices (``iotid.se``): it plays the
factory. Secrets (shares, line keys, the master key) stay in the factory directory; nothing here
prints them.

Not in scope: the fleet process (``fleet_side``), the devices (``phases``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from iotid.apdu import ApduError
from iotid.factory import ceremony
from iotid.factory.batch import FIRMWARE_KEY, create_batch
from iotid.factory.ceremony import CeremonyResult, init_ceremony
from iotid.factory.firmware import sign_mcuboot_detailed, sign_raw_detailed
from iotid.factory.fleetca import certify_fleet_ca, issue_root_crl
from iotid.factory.keystore import Signer, fingerprint
from iotid.factory.line import personalise_batch, read_line_key
from iotid.fleet.config import FleetConfig
from iotid.fleet.issuing import FleetKeys, create_fleet_keys
from iotid.host.securitydomain import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se.card import Card
from iotid.spec.firmware import ImageVersion
from iotid.spec.gp import TEST_KEY_VERSION, CardLifeCycle
from iotid.spec.manifest import Manifest, verify_manifest
from iotid.transport.loopback import LoopbackConnection

__all__ = [
    "BATCH",
    "Batch",
    "Firmware",
    "create_fleet",
    "make_batch",
    "run_ceremony",
    "sign_firmware",
    "test_keys_refused",
]

BATCH = "demo"
CUSTODIANS = ("alice", "bob", "carol")
#: The anti-rollback floor the line burns into every card.
ROLLBACK_FLOOR = 1
_SIGNED_STEP = "firmware.signed"  # the step ``iotid factory firmware sign`` records


@dataclass(frozen=True)
class Batch:
    name: str
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes
    #: Card state directories, in manifest order.
    card_dirs: list[Path]
    uids: list[str]


@dataclass(frozen=True)
class Firmware:
    name: str
    version: str
    security_counter: int
    image: bytes
    #: The detached signature file of a raw image (None: MCUboot carries its signature).
    signature: bytes | None
    sha256: str


def run_ceremony(directory: Path) -> CeremonyResult:
    """The issuance root in a 2-of-3 ceremony; the record is tied to the root certificate."""
    return init_ceremony(directory, 2, 3, list(CUSTODIANS), operator="demo-operator")


def create_fleet(
    ceremony_result: CeremonyResult, fleet_dir: Path, api_port: int, gateway_port: int
) -> tuple[FleetKeys, FleetConfig]:
    """The fleet's keys (issuing CA certified by the root: bob and carol present), the root's
    CRL, and ``fleet.json`` (SQLite in the fleet directory; the given localhost ports)."""
    shares = [s.path for s in ceremony_result.share_files]
    factory = ceremony_result.directory
    keys = create_fleet_keys(
        fleet_dir,
        ceremony_result.root_certificate,
        lambda csr: certify_fleet_ca(factory, csr, shares[1:]),
        gateway_names=["localhost", "127.0.0.1"],
        root_crl=issue_root_crl(factory, shares[:2]),
    )
    config = FleetConfig(
        fleet_dir,
        FleetConfig.default_db_url(fleet_dir),
        api_host="127.0.0.1",
        api_port=api_port,
        gateway_host="127.0.0.1",
        gateway_port=gateway_port,
        ceremony_record=(factory / ceremony.RECORD_FILE).resolve(),
    )
    config.save()
    return keys, config


def make_batch(
    ceremony_result: CeremonyResult,
    keys: FleetKeys,
    count: int,
    line_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Batch:
    """Batch :data:`BATCH` (alice and bob present) and ``count`` cards off the line."""
    factory = ceremony_result.directory
    shares = [s.path for s in ceremony_result.share_files]
    create_batch(factory, BATCH, "p256", shares[:2], rotation_authority=keys.authority.public_key())
    result = personalise_batch(
        factory, BATCH, count, line_dir, rollback_floor=ROLLBACK_FLOOR, progress=progress
    )
    data = result.manifest_path.read_bytes()
    signature = result.signature_path.read_bytes()
    manifest = verify_manifest(data, signature, ceremony_result.root_certificate)
    card_dirs = [line_dir / "cards" / f"{i:06d}" for i in range(len(manifest.cards))]
    uids = [entry.uid.hex().upper() for entry in manifest.cards]
    return Batch(BATCH, manifest, data, signature, card_dirs, uids)


def test_keys_refused(card_dir: Path) -> tuple[bool, str]:
    """A personalised card is SECURED and refuses the GP test key set (KVN 0x30)."""
    card = Card.open(card_dir)
    if card.card_life_cycle != CardLifeCycle.SECURED:
        return False, f"card life cycle 0x{card.card_life_cycle:02X}, expected SECURED"
    try:
        SecurityDomainSession(LoopbackConnection(card)).authenticate(
            StaticKeys.gp_test_keys(), kvn=TEST_KEY_VERSION
        )
    except ApduError as exc:
        return True, f"SECURED; INITIALIZE UPDATE with the GP test keys (KVN 0x30) -> {exc}"
    return False, "the GP test keys still opened a secure channel"


def _firmware_signer(factory: Path) -> Signer:
    store = ceremony.open_store(factory)
    info_dir = factory / "batches" / BATCH
    store.unlock_operational(read_line_key(info_dir / "line.key"))
    return store.signer(FIRMWARE_KEY)


def sign_firmware(
    factory: Path, body: bytes, *, name: str, version: str, security_counter: int, raw: bool
) -> Firmware:
    """Sign ``body`` with the factory's firmware key (MCUboot image, or raw + detached
    signature); the signing is recorded in the ceremony record as ``firmware.signed``."""
    signer = _firmware_signer(factory)
    parsed = ImageVersion.parse(version)
    if raw:
        signed_raw = sign_raw_detailed(
            body, signer, version=parsed, security_counter=security_counter
        )
        image, signature, details = body, signed_raw.signature_file, signed_raw.audit_details()
    else:
        signed = sign_mcuboot_detailed(
            body, signer, version=parsed, security_counter=security_counter
        )
        image, signature, details = signed.image, None, signed.audit_details()
    record = {"key": FIRMWARE_KEY, "key_fingerprint": fingerprint(signer.public_key()), **details}
    ceremony.append_step(factory, _SIGNED_STEP, record, ["demo-operator"])
    return Firmware(
        name, version, security_counter, image, signature, hashlib.sha256(image).hexdigest()
    )


def root_certificate(factory: Path) -> x509.Certificate:
    return ceremony.root_certificate(factory)

"""A whole small world for fleet tests: a real ceremony (2-of-3), the fleet's keys certified by
its root with the quorum (``iotid.factory.fleetca``), batches created with the fleet's rotation
authority, cards personalised by the factory line and booted once (PROVISION), and the signed
manifests. Everything is made by the production code; nothing here signs anything itself.

Use :func:`build_world` once per module (it takes a few seconds) and :meth:`WorldCard.copy` to
give a test its own card state when it changes the card (rotation, re-key).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from iotid.factory import ceremony
from iotid.factory.batch import create_batch
from iotid.factory.ceremony import init_ceremony
from iotid.factory.fleetca import certify_fleet_ca, issue_root_crl
from iotid.factory.line import personalise_batch
from iotid.fleet.issuing import FleetKeys, create_fleet_keys
from iotid.host.secureelement import SecureElement
from iotid.se.card import Card
from iotid.spec.manifest import Manifest, verify_manifest
from iotid.transport.loopback import LoopbackConnection

ROLLBACK_FLOOR = 1


@dataclass(frozen=True)
class WorldCard:
    """One personalised, provisioned card (a state directory) and its manifest entry."""

    path: Path
    uid: bytes
    batch: str

    @property
    def uid_hex(self) -> str:
        return self.uid.hex().upper()

    def se(self) -> SecureElement:
        """A host shim over loopback to this card (opens the card's NVM)."""
        return SecureElement(LoopbackConnection(Card.open(self.path)))

    def copy(self, dest: Path) -> WorldCard:
        """A private copy of the card's state, for tests that change it."""
        shutil.copytree(self.path, dest)
        return WorldCard(dest, self.uid, self.batch)


@dataclass(frozen=True)
class WorldBatch:
    name: str
    alg: str
    manifest: Manifest
    manifest_bytes: bytes
    signature: bytes
    cards: list[WorldCard]


@dataclass
class FleetWorld:
    base: Path
    ceremony_dir: Path
    shares: list[Path]
    root: x509.Certificate
    keys: FleetKeys
    batches: dict[str, WorldBatch] = field(default_factory=dict)

    @property
    def fleet_dir(self) -> Path:
        return self.keys.directory

    def add_batch(self, name: str, alg: str, count: int) -> WorldBatch:
        create_batch(
            self.ceremony_dir,
            name,
            alg,
            self.shares[:2],
            rotation_authority=self.keys.authority.public_key(),
        )
        out = self.base / f"line-{name}"
        result = personalise_batch(
            self.ceremony_dir, name, count, out, rollback_floor=ROLLBACK_FLOOR
        )
        data = result.manifest_path.read_bytes()
        signature = result.signature_path.read_bytes()
        manifest = verify_manifest(data, signature, self.root)
        cards = []
        for i, entry in enumerate(manifest.cards):
            card = WorldCard(out / "cards" / f"{i:06d}", entry.uid, name)
            card.se().provisioning.provision()  # first boot at the customer's site
            cards.append(card)
        batch = WorldBatch(name, alg, manifest, data, signature, cards)
        self.batches[name] = batch
        return batch


def build_world(base: Path, batches: dict[str, tuple[str, int]] | None = None) -> FleetWorld:
    """A ceremony, the fleet's keys and ``batches`` (name -> (alg, card count))."""
    cer = init_ceremony(base / "ceremony", 2, 3, ["alice", "bob", "carol"], operator="op")
    shares = [s.path for s in cer.share_files]
    root = ceremony.root_certificate(cer.directory)
    keys = create_fleet_keys(
        base / "fleet",
        root,
        lambda csr: certify_fleet_ca(cer.directory, csr, shares[1:]),
        root_crl=issue_root_crl(cer.directory, shares[:2]),
    )
    world = FleetWorld(base, cer.directory, shares, root, keys)
    for name, (alg, count) in (batches or {"p256-a": ("p256", 3)}).items():
        world.add_batch(name, alg, count)
    return world

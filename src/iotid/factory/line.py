"""The personalisation line: N emulated cards personalised for one batch, resumable, then a
signed batch manifest.

Scope: :func:`personalise_batch` opens the ceremony's key store, unlocks its OPERATIONAL tier with
the batch's line key (no quorum on the line), builds ONE
:class:`~iotid.host.personalisation.PersonalisationPlan` (batch master key, operator re-key
authority's public key, firmware issuance key, fleet rotation authority, rollback floor; the
certify callback issues each card's attestation certificate from the batch CA through the key
store) and drives the one personalisation routine, :func:`~iotid.host.personalisation.personalise`,
over a loopback connection to each card in ``OUT/cards/<index:06d>`` with per-card ISD keys
(:func:`~iotid.factory.diversify.diversify_isd_keys`). At the end it writes ``OUT/manifest.json``
and ``OUT/manifest.sig`` (``iotid.factory.manifest``).

Resumability (kill the line at any instant, run it again: no duplicates, no gaps, every card
consistent) rests on three files:

- ``OUT/line.jsonl``, the journal: one canonical JSON line per finished card (index, UID,
  attestation certificate fingerprint, predicted identity key), appended and fsync'd (with
  ``durable``) after the card is SECURED. A torn last line (a kill mid-write) is dropped.
- ``OUT/pending/<index:06d>.json``, written atomically by the certify callback *before* the card
  stores its attestation certificate: the UID and that certificate. An attestation applet, once
  personalised, neither exports its key nor quotes before first boot (PROVISION, which the factory
  must not run), so this record is how the line knows which certificate a card holds.
- the card directory itself (its NVM commits atomically per APDU; ``se.nvm``).

On a restart, journaled cards are skipped (their directories must still exist). An unjournaled
card directory is inspected: a card that is not SECURED (or does not even open) was torn
mid-personalisation and is *scrapped* (deleted) and redone on a fresh card with a new UID, as a
real line scraps a torn card rather than trust its half-written state. A SECURED card is kept and
journaled only if its ISD opens with its own diversified keys, GET STATUS says SECURED, the CPLC
UID read under that channel matches the pending record, and the batch CA issued the pending
certificate for that UID; a SECURED card that fails this (a stray card) is a LineError and is
never deleted. UIDs are checked unique. The routine itself refuses a SECURED card
(:class:`AlreadyPersonalisedError`); the line never papers over that.
Not in scope: the routine itself (``iotid.host.personalisation``), batch creation
(``iotid.factory.batch``), real card readers (the line makes emulated cards).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iotid.apdu import ApduError
from iotid.crypto.identity_kdf import derive_identity_key
from iotid.factory import ceremony
from iotid.factory.batch import BatchError, BatchInfo, attestation_certifier, load_batch
from iotid.factory.diversify import diversify_isd_keys
from iotid.factory.keystore import FactoryKeyStore, PublicKey
from iotid.factory.manifest import build_manifest, write_signed_manifest
from iotid.host.errors import HostError
from iotid.host.personalisation import AlreadyPersonalisedError, PersonalisationPlan, personalise
from iotid.host.securitydomain import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se.card import Card
from iotid.se.nvm import NvmError
from iotid.spec import gp
from iotid.spec.algorithms import KeyAlg
from iotid.spec.manifest import ManifestCard, certificate_sha256
from iotid.transport.base import TransportError
from iotid.transport.loopback import LoopbackConnection

__all__ = [
    "AlreadyPersonalisedError",
    "JOURNAL_NAME",
    "LineError",
    "LineResult",
    "personalise_batch",
    "read_line_key",
]

CARDS_DIR = "cards"
PENDING_DIR = "pending"
JOURNAL_NAME = "line.jsonl"
_MAX_UID_DRAWS = 8
_PEM = serialization.Encoding.PEM
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
Certify = Callable[[PublicKey, bytes], tuple[x509.Certificate, x509.Certificate]]


class LineError(Exception):
    """The line cannot run or resume (bad journal, missing card, bad count); says why."""


@dataclass(frozen=True)
class LineResult:
    batch: str
    count: int
    #: This run: cards personalised, found journaled, recovered (SECURED, not yet journaled),
    #: scrapped (torn: deleted and redone).
    personalised: int
    skipped: int
    recovered: int
    scrapped: int
    manifest_path: Path
    signature_path: Path
    cards: tuple[ManifestCard, ...]


# -- the journal and the pending records ----------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    batch: str
    index: int
    uid: bytes
    attestation_cert_sha256: str
    identity_pem: str | None

    def line(self) -> bytes:
        doc = {
            "batch": self.batch,
            "index": self.index,
            "uid": self.uid.hex().upper(),
            "attestation_cert_sha256": self.attestation_cert_sha256,
            "identity_public_key_pem": self.identity_pem,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"

    def manifest_card(self, alg: KeyAlg) -> ManifestCard:
        key = None
        if self.identity_pem is not None:
            loaded = serialization.load_pem_public_key(self.identity_pem.encode("ascii"))
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                raise LineError(f"journal: card {self.index:06d} has a bad identity key")
            key = loaded
        return ManifestCard(self.uid, key, self.attestation_cert_sha256, alg)


def _rotation_authority(info: BatchInfo, store: FactoryKeyStore) -> PublicKey:
    """The fleet's own authority key when the batch was created with one, else the store's."""
    path = info.rotation_authority_path
    if path.is_file():
        key = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise BatchError(f"batch {info.name!r}: {path.name} is not an EC public key")
        return key
    return store.public_key(info.keys["rotation_authority"])


def _parse_entry(raw: bytes, batch: str) -> _Entry:
    doc = json.loads(raw.decode("ascii"))
    entry = _Entry(
        str(doc["batch"]),
        int(doc["index"]),
        bytes.fromhex(doc["uid"]),
        str(doc["attestation_cert_sha256"]),
        None if doc["identity_public_key_pem"] is None else str(doc["identity_public_key_pem"]),
    )
    if entry.index < 0:
        raise ValueError("negative index")
    if entry.batch != batch:
        raise LineError(f"the journal belongs to batch {entry.batch!r}, not {batch!r}")
    return entry


def _read_journal(path: Path, batch: str) -> dict[int, _Entry]:
    """Journal entries by index; a torn last line (a kill mid-append) is cut off the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    entries: dict[int, _Entry] = {}
    uids: set[bytes] = set()
    good = 0
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        last = number == len(lines)
        if last and not raw:
            break
        try:
            if last:  # no newline: the append was torn
                raise ValueError("torn")
            entry = _parse_entry(raw, batch)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            if last:
                with path.open("r+b") as f:
                    f.truncate(good)
                break
            raise LineError(f"{path}: line {number} is corrupt") from None
        if entry.index in entries or entry.uid in uids:
            raise LineError(f"{path}: line {number} repeats a card or a UID")
        entries[entry.index] = entry
        uids.add(entry.uid)
        good += len(raw) + 1
    return entries


def _append(path: Path, entry: _Entry, *, durable: bool) -> None:
    with path.open("ab") as f:
        f.write(entry.line())
        f.flush()
        if durable:
            os.fsync(f.fileno())


def _write_atomic(path: Path, data: bytes, *, durable: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    tmp.replace(path)


# -- one run ---------------------------------------------------------------------------------------
@dataclass
class _Line:
    info: BatchInfo
    out_dir: Path
    plan: PersonalisationPlan
    isd_master: bytes = dataclasses.field(repr=False)
    durable: bool
    entries: dict[int, _Entry] = dataclasses.field(default_factory=dict)

    def card_dir(self, index: int) -> Path:
        return self.out_dir / CARDS_DIR / f"{index:06d}"

    def pending_path(self, index: int) -> Path:
        return self.out_dir / PENDING_DIR / f"{index:06d}.json"

    def isd_keys(self, uid: bytes) -> StaticKeys:
        return diversify_isd_keys(self.isd_master, uid)

    def entry(self, index: int, uid: bytes, cert: x509.Certificate) -> _Entry:
        pem = None
        if self.info.alg.is_ec:  # RSA identity keys are born on the card: nothing to predict
            key = derive_identity_key(self.plan.master_key, uid, self.info.alg).public_key()
            pem = key.public_bytes(_PEM, _SPKI).decode("ascii")
        return _Entry(self.info.name, index, uid, certificate_sha256(cert), pem)

    def personalise_one(self, index: int, taken: set[bytes]) -> _Entry:
        """A fresh card at ``index`` (whose directory must not exist), personalised."""
        card_dir = self.card_dir(index)
        for _ in range(_MAX_UID_DRAWS):
            card = Card.create(card_dir, durable=self.durable)
            if card.uid not in taken:
                break
            shutil.rmtree(card_dir)  # a UID collision (2**-80 per pair): draw another card
        else:  # pragma: no cover - astronomically unlikely
            raise LineError(f"card {index:06d}: could not draw a unique UID")
        base = self.plan.certify

        def certify(public: PublicKey, uid: bytes) -> tuple[x509.Certificate, x509.Certificate]:
            cert, ca = base(public, uid)
            # Recorded before the card stores it: see "Resumability" in the module docstring.
            doc = {"uid": uid.hex().upper(), "certificate": cert.public_bytes(_PEM).decode()}
            _write_atomic(self.pending_path(index), json.dumps(doc).encode(), durable=self.durable)
            return cert, ca

        plan = dataclasses.replace(self.plan, certify=certify)
        result = personalise(LoopbackConnection(card), plan, isd_keys_for=self.isd_keys)
        return self.entry(index, result.uid, result.attestation_certificate)

    def inspect(self, index: int) -> _Entry | None:
        """An unjournaled card directory: its entry if it holds a complete card of this line,
        None if it holds a torn card (to scrap). A SECURED card that is not verifiably this
        line's is a LineError: it is never deleted."""
        try:
            card = Card.open(self.card_dir(index), durable=self.durable)
        except (NvmError, OSError, ValueError):
            return None  # torn before the card's first commit
        if card.card_life_cycle not in (gp.CardLifeCycle.SECURED, gp.CardLifeCycle.CARD_LOCKED):
            return None  # torn mid-personalisation
        entry = self._verify_secured(card, index)
        if entry is None:
            raise LineError(
                f"card {index:06d} is SECURED but not verifiably a card of this line "
                f"(a stray card?): move {self.card_dir(index)} away and run again"
            )
        return entry

    def _verify_secured(self, card: Card, index: int) -> _Entry | None:
        try:
            doc = json.loads(self.pending_path(index).read_text(encoding="ascii"))
            pending_uid = bytes.fromhex(doc["uid"])
            cert = x509.load_pem_x509_certificate(doc["certificate"].encode("ascii"))
            sd = SecurityDomainSession(LoopbackConnection(card))
            # GPC 2.3.1 Amd D §7.1: only the card's own diversified key set opens the channel.
            sd.authenticate(self.isd_keys(pending_uid), kvn=self.plan.new_isd_kvn, level=0x33)
            uid = sd.get_cplc().uid
            isd = next((e for e in sd.get_status(gp.GET_STATUS_ISD) if e.aid == gp.ISD_AID), None)
        except (OSError, ApduError, HostError, TransportError, ValueError, KeyError, TypeError):
            return None
        if uid != pending_uid or isd is None or isd.life_cycle != gp.CardLifeCycle.SECURED:
            return None
        if not _issued_for(cert, self.info.ca_certificate, uid):
            return None
        return self.entry(index, uid, cert)

    def run(
        self, count: int, progress: Callable[[int, int], None] | None
    ) -> tuple[int, int, int, int]:
        """Cards 0..count-1 done and journaled; (personalised, skipped, recovered, scrapped)."""
        journal = self.out_dir / JOURNAL_NAME
        entries = self.entries = _read_journal(journal, self.info.name)
        if any(index >= count for index in entries):
            raise LineError(f"{self.out_dir} holds more than {count} cards of this batch")
        for index in entries:
            if not (self.card_dir(index) / "nvm.bin").exists():
                raise LineError(f"card {index:06d} is journaled but its directory is gone")
        taken = {e.uid for e in entries.values()}
        skipped, personalised, recovered, scrapped = len(entries), 0, 0, 0
        if progress:
            progress(len(entries), count)
        for index in range(count):
            if index in entries:
                continue
            card_dir = self.card_dir(index)
            entry = self.inspect(index) if card_dir.exists() else None
            if entry is not None:
                if entry.uid in taken:
                    raise LineError(f"card {index:06d} repeats the UID of another card")
                recovered += 1
            else:
                if card_dir.exists():
                    shutil.rmtree(card_dir)  # torn mid-personalisation: scrapped, redone afresh
                    scrapped += 1
                entry = self.personalise_one(index, taken)
                personalised += 1
            _append(journal, entry, durable=self.durable)
            self.pending_path(index).unlink(missing_ok=True)
            entries[index] = entry
            taken.add(entry.uid)
            if progress:
                progress(len(entries), count)
        shutil.rmtree(self.out_dir / PENDING_DIR, ignore_errors=True)  # all journaled now
        return personalised, skipped, recovered, scrapped


def read_line_key(path: Path) -> bytes:
    """The line key in a ``line.key`` file (hex text, as ``create_batch`` writes it)."""
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        raise LineError(f"no line key at {path}") from None
    except (ValueError, UnicodeDecodeError):
        raise LineError(f"{path} is not a line key file") from None


def personalise_batch(
    directory: Path,
    batch: str,
    count: int,
    out_dir: Path,
    *,
    line_key: bytes | None = None,
    rollback_floor: int = 0,
    progress: Callable[[int, int], None] | None = None,
    durable: bool = False,
) -> LineResult:
    """Personalise cards 0..count-1 of ``batch`` into ``out_dir`` (resuming), sign the manifest.

    ``durable`` fsyncs every card commit and journal line (survives an OS crash, not only a
    killed process); ``progress(done, count)`` is called as cards finish. The signed manifest's
    SHA-256 is appended to the ceremony record (``batch.manifest.signed``).
    """
    if count < 1:
        raise LineError("the count must be at least 1")
    info = load_batch(directory, batch)
    store = ceremony.open_store(directory)
    store.unlock_operational(
        line_key if line_key is not None else read_line_key(info.line_key_path)
    )
    root_cert = ceremony.root_certificate(directory)
    if certificate_sha256(root_cert) != info.root_sha256:
        raise BatchError(f"batch {batch!r} was not made under this ceremony's root")
    ceremony.open_record(directory)  # a corrupted record stops the line before any card
    ca_signer = store.signer(info.keys["ca"])
    issue = attestation_certifier(info.ca_certificate, ca_signer)
    ca_cert = info.ca_certificate
    plan = PersonalisationPlan(
        alg=info.alg,
        master_key=store.secret(info.keys["master"]),
        operator_rekey_key=store.public_key(info.keys["operator_rekey"]),
        certify=lambda public, uid: (issue(public, uid), ca_cert),
        firmware_keys=(store.public_key(info.keys["firmware"]),),
        rotation_authority=_rotation_authority(info, store),
        rollback_floor=rollback_floor,
    )
    line = _Line(info, out_dir, plan, store.secret(info.keys["isd_master"]), durable)
    (out_dir / CARDS_DIR).mkdir(parents=True, exist_ok=True)
    (out_dir / PENDING_DIR).mkdir(exist_ok=True)
    counts = line.run(count, progress)
    cards = tuple(line.entries[i].manifest_card(info.alg) for i in range(count))
    manifest = build_manifest(batch, info.alg, ca_cert, root_cert, cards)
    manifest_path, signature_path = write_signed_manifest(
        out_dir, manifest, ca_signer, root_cert, durable=durable
    )
    ceremony.append_step(
        directory,
        "batch.manifest.signed",
        {
            "batch": batch,
            "cards": count,
            "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        },
        ["iotid-line"],
    )
    return LineResult(batch, count, *counts, manifest_path, signature_path, cards)


def _issued_for(cert: x509.Certificate, ca: x509.Certificate, uid: bytes) -> bool:
    """The batch CA signed ``cert`` and it names ``uid`` as its subject serialNumber."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    serials = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    return len(serials) == 1 and serials[0].value == uid.hex().upper()

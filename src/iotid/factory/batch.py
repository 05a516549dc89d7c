"""Batch creation: a per-batch attestation CA signed by the root, with the quorum present.

Scope: :func:`create_batch` unlocks the ceremony's key store with M shares and generates, in the
OPERATIONAL tier, the batch attestation CA key (EC P-384, ``batch/<name>/ca``), the batch master
key (``batch/<name>/master``, 32 bytes) and the ISD diversification master
(``batch/<name>/isd-master``, 32 bytes); it issues the batch CA certificate with the root key
(CA, pathLenConstraint 0, keyCertSign + cRLSign, SKI/AKI, 20 years; RFC 5280 §4.2.1); it creates
the factory-wide keys on first use: ``firmware`` (P-256, operational: the firmware issuance key
burned into cards), ``operator-rekey`` (P-256, QUORUM tier: an admin re-key of a card's identity
needs the quorum) and ``fleet-rotation-authority`` (P-256, operational: its public key goes to
the fleet). It writes ``DIR/batches/<name>/`` with ``batch.json`` (public facts and
fingerprints), ``batch-ca.pem`` and ``line.key`` (the store's line credential, mode 0600), and
appends one step per action to the ceremony record. :func:`attestation_certifier` is the batch
CA's one end-entity profile (the card attestation certificate), used by the line.

Nothing half-done: every check (name, algorithm, no existing batch directory or keys, M shares)
runs before the first key is made; the batch directory is written under a temporary name and
renamed into place last, so it exists complete or not at all. A creation torn after key
generation leaves orphan keys under the name, which is then refused (pick another name).
Not in scope: personalisation (``iotid.factory.line``), the ceremony itself.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from iotid.factory import ceremony
from iotid.factory.keystore import (
    FactoryKeyStore,
    PublicKey,
    Signer,
    Tier,
    UnknownKeyError,
    fingerprint,
)
from iotid.factory.profiles import CA_KEY_USAGE, SIGNING_KEY_USAGE
from iotid.factory.x509sign import sign_certificate
from iotid.spec.algorithms import KeyAlg
from iotid.spec.manifest import BATCH_NAME_PATTERN, IDENTITY_ALG_NAMES, certificate_sha256

__all__ = [
    "BATCHES_DIR",
    "BatchError",
    "BatchInfo",
    "FIRMWARE_KEY",
    "OPERATOR_REKEY_KEY",
    "ROTATION_AUTHORITY_KEY",
    "attestation_certifier",
    "batch_key_names",
    "create_batch",
    "load_batch",
    "parse_alg",
]

BATCHES_DIR = "batches"
BATCH_FORMAT = "iotid-batch-v1"
FIRMWARE_KEY = "firmware"
OPERATOR_REKEY_KEY = "operator-rekey"
ROTATION_AUTHORITY_KEY = "fleet-rotation-authority"
#: In a batch directory: the fleet's own rotation authority public key (PEM SPKI), which then
#: replaces the factory store's ``fleet-rotation-authority`` for the batch's cards.
ROTATION_AUTHORITY_FILE = "rotation-authority.pem"
_FACTORY_KEYS = (
    (FIRMWARE_KEY, Tier.OPERATIONAL),
    (OPERATOR_REKEY_KEY, Tier.QUORUM),
    (ROTATION_AUTHORITY_KEY, Tier.OPERATIONAL),
)
_CA_VALIDITY = dt.timedelta(days=365 * 20)
_ATTESTATION_VALIDITY = dt.timedelta(days=365 * 20)


class BatchError(Exception):
    """The batch cannot be created or loaded; the message says why (never a secret)."""


@runtime_checkable
class _LineKeyIssuer(Protocol):
    def create_line_key(self) -> bytes: ...


@dataclass(frozen=True)
class BatchInfo:
    """The public facts of a batch, as ``batch.json`` and ``batch-ca.pem`` hold them."""

    name: str
    alg: KeyAlg
    directory: Path
    ca_certificate: x509.Certificate
    root_sha256: str
    created: str
    #: Key names in the store: ca, master, isd_master, firmware, operator_rekey, rotation_authority.
    keys: dict[str, str]
    #: Public key fingerprints (SHA-256 of SPKI) and secret fingerprints, by the same names.
    fingerprints: dict[str, str]

    @property
    def line_key_path(self) -> Path:
        return self.directory / "line.key"

    @property
    def rotation_authority_path(self) -> Path:
        """The fleet's rotation authority public key, when the fleet supplied its own."""
        return self.directory / ROTATION_AUTHORITY_FILE


def parse_alg(name: str) -> KeyAlg:
    """p256, p384, rsa2048 or rsa3072 (the identity and attestation algorithm of the batch)."""
    for alg, spelled in IDENTITY_ALG_NAMES.items():
        if spelled == name.lower():
            return alg
    raise BatchError(
        f"unknown algorithm {name!r}: expected one of {sorted(IDENTITY_ALG_NAMES.values())}"
    )


def batch_key_names(name: str) -> dict[str, str]:
    return {
        "ca": f"batch/{name}/ca",
        "master": f"batch/{name}/master",
        "isd_master": f"batch/{name}/isd-master",
        "firmware": FIRMWARE_KEY,
        "operator_rekey": OPERATOR_REKEY_KEY,
        "rotation_authority": ROTATION_AUTHORITY_KEY,
    }


def create_batch(
    directory: Path,
    name: str,
    alg: KeyAlg | str,
    share_files: Sequence[Path],
    *,
    rotation_authority: PublicKey | None = None,
) -> BatchInfo:
    """Create batch ``name`` in the ceremony ``directory``; needs M of the N share files.

    ``rotation_authority``: the fleet's rotation authority public key (``iotid fleet init``
    makes it); the batch's cards trust it instead of the store's ``fleet-rotation-authority``.
    """
    alg = parse_alg(alg) if isinstance(alg, str) else alg
    if alg not in IDENTITY_ALG_NAMES:
        raise BatchError(f"{alg.name} is not a batch algorithm (p256, p384, rsa2048, rsa3072)")
    if BATCH_NAME_PATTERN.fullmatch(name) is None:
        raise BatchError(
            "a batch name is 1-64 characters: letters, digits, '.', '_', '-' (not first)"
        )
    target = directory / BATCHES_DIR / name
    if target.exists():
        raise BatchError(f"batch {name!r} exists already")
    ceremony.open_record(directory)  # a corrupted record stops us before any key is made
    store = ceremony.quorum_unlock(directory, share_files)
    actors = custodians_present(share_files)
    names = batch_key_names(name)
    listed = store.keys()
    present = {k.name for k in listed}
    taken = [names[k] for k in ("ca", "master", "isd_master") if names[k] in present]
    if taken:
        raise BatchError(f"the key store already holds keys of batch {name!r}; use another name")
    if not isinstance(store, _LineKeyIssuer):
        raise BatchError(f"the {store.backend} key store cannot issue a line key")
    root_cert = ceremony.root_certificate(directory)

    fingerprints = _factory_keys(directory, store, actors)
    ca_public = store.generate(names["ca"], KeyAlg.EC_P384, tier=Tier.OPERATIONAL)
    ca_cert = _issue_ca(store, name, ca_public, root_cert)
    store.generate_secret(names["master"], 32, tier=Tier.OPERATIONAL)
    store.generate_secret(names["isd_master"], 32, tier=Tier.OPERATIONAL)
    listed = store.keys()
    infos = {k.name: k.fingerprint for k in listed}
    fingerprints |= {
        "ca": fingerprint(ca_public),
        "master": infos[names["master"]],
        "isd_master": infos[names["isd_master"]],
        "ca_cert": certificate_sha256(ca_cert),
    }
    if rotation_authority is not None:
        fingerprints["rotation_authority"] = fingerprint(rotation_authority)
    line_key = store.create_line_key()

    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    info = BatchInfo(
        name, alg, target, ca_cert, certificate_sha256(root_cert), created, names, fingerprints
    )
    _write_batch_dir(info, line_key, rotation_authority)
    ceremony.append_step(
        directory,
        "batch.created",
        {
            "batch": name,
            "algorithm": IDENTITY_ALG_NAMES[alg],
            "batch_ca_sha256": certificate_sha256(ca_cert),
            "key_fingerprints": {names[k]: fingerprints[k] for k in names},
            "rotation_authority": "fleet" if rotation_authority is not None else "factory",
            "rotation_authority_fingerprint": fingerprints["rotation_authority"],
            "line_key_released": True,
        },
        actors,
    )
    return info


def load_batch(directory: Path, name: str) -> BatchInfo:
    """The batch's public facts (no store access); BatchError if it does not exist or is bad."""
    if BATCH_NAME_PATTERN.fullmatch(name) is None:
        raise BatchError(f"bad batch name {name!r}")
    target = directory / BATCHES_DIR / name
    try:
        doc = json.loads((target / "batch.json").read_text(encoding="utf-8"))
        cert = x509.load_pem_x509_certificate((target / "batch-ca.pem").read_bytes())
        if doc["format"] != BATCH_FORMAT or doc["name"] != name:
            raise BatchError(f"batch {name!r}: batch.json is not an {BATCH_FORMAT} for it")
        info = BatchInfo(
            name,
            parse_alg(doc["algorithm"]),
            target,
            cert,
            str(doc["root_sha256"]),
            str(doc["created"]),
            {str(k): str(v) for k, v in doc["keys"].items()},
            {str(k): str(v) for k, v in doc["fingerprints"].items()},
        )
    except FileNotFoundError:
        raise BatchError(f"no batch {name!r} in {directory}") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BatchError(f"batch {name!r}: batch.json or batch-ca.pem is malformed") from None
    if certificate_sha256(cert) != info.fingerprints.get("ca_cert"):
        raise BatchError(f"batch {name!r}: batch-ca.pem is not the certificate batch.json names")
    return info


def attestation_certifier(
    batch_ca: x509.Certificate, signer: Signer
) -> Callable[[PublicKey, bytes], x509.Certificate]:
    """(on-card attestation public key, UID) -> its certificate from the batch CA.

    The profile of ``devpki.certify_attestation_key``: subject CN "iotid attestation <UID>" and
    serialNumber = UID (hex), end entity, digitalSignature, SKI/AKI (RFC 5280 §4.2.1), 20 years.
    """
    ca_public = signer.public_key()
    usage = SIGNING_KEY_USAGE

    # The same for every card of the batch: computed once, not per certificate.
    issuer = batch_ca.subject
    end_entity = x509.BasicConstraints(ca=False, path_length=None)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public)

    def certify(public: PublicKey, uid: bytes) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        uid_hex = uid.hex().upper()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"iotid attestation {uid_hex}"),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, uid_hex),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _ATTESTATION_VALIDITY)
            .add_extension(end_entity, critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(aki, critical=False)
        )
        return sign_certificate(builder, signer)

    return certify


# -- internals ------------------------------------------------------------------------------------
def _factory_keys(directory: Path, store: FactoryKeyStore, actors: Sequence[str]) -> dict[str, str]:
    """Create the factory-wide keys missing from the store; their fingerprints by role."""
    out = {}
    for role, (key_name, tier) in zip(
        ("firmware", "operator_rekey", "rotation_authority"), _FACTORY_KEYS, strict=True
    ):
        try:
            public = store.public_key(key_name)
        except UnknownKeyError:
            public = store.generate(key_name, KeyAlg.EC_P256, tier=tier)
            ceremony.append_step(
                directory,
                "factory.key.generated",
                {"key": key_name, "tier": tier.value, "fingerprint": fingerprint(public)},
                actors,
            )
        out[role] = fingerprint(public)
    return out


def _issue_ca(
    store: FactoryKeyStore, name: str, ca_public: PublicKey, root_cert: x509.Certificate
) -> x509.Certificate:
    root_signer = store.signer(ceremony.ROOT_KEY)
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iotid"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"iotid batch attestation CA {name}"),
        ]
    )
    usage = CA_KEY_USAGE
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root_cert.subject)
        .public_key(ca_public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_signer.public_key()),
            critical=False,
        )
    )
    return sign_certificate(builder, root_signer)


def _write_batch_dir(info: BatchInfo, line_key: bytes, authority: PublicKey | None) -> None:
    tmp = info.directory.with_name(f".{info.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    cert_pem = info.ca_certificate.public_bytes(serialization.Encoding.PEM)
    doc = {
        "format": BATCH_FORMAT,
        "name": info.name,
        "algorithm": IDENTITY_ALG_NAMES[info.alg],
        "created": info.created,
        "root_sha256": info.root_sha256,
        "keys": info.keys,
        "fingerprints": info.fingerprints,
    }
    (tmp / "batch.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    (tmp / "batch-ca.pem").write_bytes(cert_pem)
    if authority is not None:
        (tmp / ROTATION_AUTHORITY_FILE).write_bytes(
            authority.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    fd = os.open(tmp / "line.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(line_key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(info.directory)


def custodians_present(share_files: Sequence[Path]) -> list[str]:
    """The custodians present: ceremony share files are named ``<custodian>.share``."""
    return [Path(p).stem for p in share_files]

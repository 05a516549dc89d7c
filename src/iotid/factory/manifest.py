"""Producing the signed batch manifest at the factory (the format is ``iotid.spec.manifest``).

Scope: assemble a :class:`~iotid.spec.manifest.Manifest` from the line's finished cards, sign its
canonical bytes with the batch attestation CA key through a key-store
:class:`~iotid.factory.keystore.Signer` (the key never leaves its backend), check the signature
with the exact verifier the fleet runs (``verify_manifest`` against the root), and write
``manifest.json`` and ``manifest.sig`` atomically (temporary file, fsync, rename).

Not in scope: the document's rules and the verification itself (``iotid.spec.manifest``), which
cards are finished (``iotid.factory.line``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotid.factory.keystore import Signer
from iotid.spec.algorithms import KeyAlg
from iotid.spec.manifest import (
    Manifest,
    ManifestCard,
    ManifestError,
    certificate_sha256,
    encode_manifest,
    verify_manifest,
)

__all__ = ["MANIFEST_NAME", "SIGNATURE_NAME", "build_manifest", "write_signed_manifest"]

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"


def build_manifest(
    batch: str,
    alg: KeyAlg,
    batch_ca: x509.Certificate,
    root_cert: x509.Certificate,
    cards: Sequence[ManifestCard],
    *,
    created: dt.datetime | None = None,
) -> Manifest:
    return Manifest(
        batch=batch,
        algorithm=alg,
        batch_ca=batch_ca,
        root_sha256=certificate_sha256(root_cert),
        created=(created or dt.datetime.now(dt.UTC)).replace(microsecond=0),
        cards=tuple(cards),
    )


def write_signed_manifest(
    out_dir: Path,
    manifest: Manifest,
    signer: Signer,
    root_cert: x509.Certificate,
    *,
    durable: bool = True,
) -> tuple[Path, Path]:
    """Sign and write ``out_dir/manifest.json`` + ``manifest.sig``; returns both paths.

    The pair is verified as the fleet would before anything is written: a signer that is not the
    batch CA's key, or a batch CA the root did not issue, fails here (ManifestError).
    """
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if signer.public_key().public_bytes(der, spki) != manifest.batch_ca.public_key().public_bytes(
        der, spki
    ):
        raise ManifestError("the manifest signer is not the batch CA's key")
    data = encode_manifest(manifest)
    signature = signer.sign(data)
    verify_manifest(data, signature, root_cert)
    manifest_path, signature_path = out_dir / MANIFEST_NAME, out_dir / SIGNATURE_NAME
    # The signature first: a reader that finds a new manifest.json finds its signature beside it
    # (a stale pair fails verification, it is never silently accepted).
    _write_atomic(signature_path, signature, durable=durable)
    _write_atomic(manifest_path, data, durable=durable)
    return manifest_path, signature_path


def _write_atomic(path: Path, data: bytes, *, durable: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""Signed batch manifests for the fleet tests: a test issuance root, a batch CA under it, and
manifests of derived identity keys signed by that CA (the construction of
tests/unit/factory/test_manifest.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iotid.crypto.identity_kdf import derive_identity_key
from iotid.factory.manifest import build_manifest
from iotid.spec.algorithms import KeyAlg
from iotid.spec.manifest import ManifestCard, encode_manifest


def make_ca(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0 if issuer else None), True)
        .sign(issuer_key, hashes.SHA384())
    )


class Manifests:
    """A test issuance root and batch CAs under it; builds signed manifests."""

    MASTER = bytes(range(32))

    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = make_ca("test root", self.root_key, self.root_key, None)
        self.ca_key = ec.generate_private_key(ec.SECP384R1())
        self.ca = make_ca("test batch CA", self.ca_key, self.root_key, self.root.subject)

    @staticmethod
    def uids(first: int, count: int, width: int = 8) -> list[bytes]:
        return [(first + n).to_bytes(width, "big") for n in range(count)]

    def cards(self, uids: Sequence[bytes], alg: KeyAlg = KeyAlg.EC_P256) -> list[ManifestCard]:
        out = []
        for uid in uids:
            key = None if alg.is_rsa else derive_identity_key(self.MASTER, uid, alg).public_key()
            out.append(ManifestCard(uid, key, hashlib.sha256(b"att" + uid).hexdigest(), alg))
        return out

    def make(
        self, batch: str, uids: Sequence[bytes], alg: KeyAlg = KeyAlg.EC_P256
    ) -> tuple[bytes, bytes]:
        """Canonical manifest bytes and the batch CA's signature over them."""
        manifest = build_manifest(batch, alg, self.ca, self.root, self.cards(uids, alg))
        return encode_manifest(manifest), self.sign(encode_manifest(manifest))

    def other_root(self) -> x509.Certificate:
        """A root with the same name as the test root but another key."""
        key = ec.generate_private_key(ec.SECP384R1())
        return make_ca("test root", key, key, None)

    def sign(self, data: bytes) -> bytes:
        return self.ca_key.sign(data, ec.ECDSA(hashes.SHA384()))

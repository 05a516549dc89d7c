"""The batch manifest: the wire contract between the factory and the fleet (``iotid-manifest-v1``).

Scope: the document, its canonical encoding, and its verification by a fleet that holds only the
issuance root certificate.

The document is a JSON object (RFC 8259), encoded canonically: keys sorted, no whitespace
(``separators=(",", ":")``), ASCII only, so one manifest has exactly one byte string::

    {"format": "iotid-manifest-v1",
     "batch": NAME, "algorithm": "p256" | "p384" | "rsa2048" | "rsa3072",
     "batch_ca_pem": the batch attestation CA certificate (PEM),
     "root_sha256": SHA-256 of the issuance root certificate's DER (hex, lower case),
     "created": UTC time, "YYYY-MM-DDTHH:MM:SSZ",
     "cards": [{"uid": hex, upper case,
                "identity_public_key_pem": PEM SubjectPublicKeyInfo, or null,
                "attestation_cert_sha256": SHA-256 of the attestation certificate's DER (hex),
                "algorithm": as above}, ...]}

``identity_public_key_pem`` is the key the card derives at first boot,
KDF(batch master key, UID, "identity-v1") (DESIGN.md section 6.1), which the factory can compute;
it is null for RSA, whose identity key the card generates from its own RNG (nobody can predict
it; the fleet trusts it through the attestation quote alone). Cards are listed in line order.

The signature is detached: ECDSA (DER, RFC 3279 §2.2.3) by the batch attestation CA key over the
canonical bytes, with the curve's hash (SHA-256 for P-256, SHA-384 for P-384). The batch CA
certificate travels inside the manifest and is checked to be a CA issued by the root, so the
root alone suffices to verify. :func:`verify_manifest` raises :class:`ManifestError` on anything
wrong: malformed or non-canonical JSON, a duplicated key or UID, a batch CA the root did not
issue, a root fingerprint that is not the given root's, a bad signature.

Not in scope: producing the manifest (``iotid.factory.manifest``: the line's journal and the
signing key), importing it into the registry (the fleet), certificate validity periods.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotid.spec.algorithms import KeyAlg

__all__ = [
    "BATCH_NAME_PATTERN",
    "FORMAT",
    "IDENTITY_ALG_NAMES",
    "Manifest",
    "ManifestCard",
    "ManifestError",
    "alg_name",
    "certificate_sha256",
    "encode_manifest",
    "signature_hash",
    "verify_manifest",
]

FORMAT = "iotid-manifest-v1"
#: A batch name: also a directory name at the factory, hence the restricted alphabet.
BATCH_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Identity algorithms of a batch, by their manifest (and CLI) spelling.
IDENTITY_ALG_NAMES: dict[KeyAlg, str] = {
    KeyAlg.EC_P256: "p256",
    KeyAlg.EC_P384: "p384",
    KeyAlg.RSA_2048: "rsa2048",
    KeyAlg.RSA_3072: "rsa3072",
}
_ALGS_BY_NAME = {name: alg for alg, name in IDENTITY_ALG_NAMES.items()}
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_HEX_UPPER = re.compile(r"(?:[0-9A-F]{2}){1,32}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TOP_KEYS = frozenset({"format", "batch", "algorithm", "batch_ca_pem", "root_sha256", "created"})
#: What ``cryptography`` raises on a certificate or key that does not parse (they are not all
#: ValueErrors); a tampered manifest must come out as ManifestError, never as one of these.
_PARSE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)
_CARD_KEYS = frozenset({"uid", "identity_public_key_pem", "attestation_cert_sha256", "algorithm"})

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class ManifestError(ValueError):
    """The manifest or its signature is not acceptable; the message says why."""


def alg_name(alg: KeyAlg) -> str:
    try:
        return IDENTITY_ALG_NAMES[alg]
    except KeyError:
        raise ValueError(f"{alg.name} is not an identity algorithm") from None


def certificate_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, hex (the manifest's certificate fingerprints)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def signature_hash(public_key: ec.EllipticCurvePublicKey) -> hashes.HashAlgorithm:
    """The hash of the manifest signature for a batch CA key: the curve's own."""
    if isinstance(public_key.curve, ec.SECP384R1):
        return hashes.SHA384()
    if isinstance(public_key.curve, ec.SECP256R1):
        return hashes.SHA256()
    raise ManifestError(f"unsupported batch CA curve {public_key.curve.name}")


@dataclass(frozen=True)
class ManifestCard:
    uid: bytes
    #: The predicted identity public key (EC); None for RSA.
    identity_public_key: PublicKey | None
    attestation_cert_sha256: str
    algorithm: KeyAlg

    def to_json(self) -> dict[str, Any]:
        pem = (
            None
            if self.identity_public_key is None
            else self.identity_public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode("ascii")
        )
        return {
            "uid": self.uid.hex().upper(),
            "identity_public_key_pem": pem,
            "attestation_cert_sha256": self.attestation_cert_sha256,
            "algorithm": alg_name(self.algorithm),
        }


@dataclass(frozen=True)
class Manifest:
    batch: str
    algorithm: KeyAlg
    batch_ca: x509.Certificate
    root_sha256: str
    created: dt.datetime
    cards: tuple[ManifestCard, ...]

    def card(self, uid: bytes) -> ManifestCard | None:
        return next((c for c in self.cards if c.uid == uid), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "batch": self.batch,
            "algorithm": alg_name(self.algorithm),
            "batch_ca_pem": self.batch_ca.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "root_sha256": self.root_sha256,
            "created": self.created.astimezone(dt.UTC).strftime(_TIME_FORMAT),
            "cards": [c.to_json() for c in self.cards],
        }


def encode_manifest(manifest: Manifest) -> bytes:
    """The canonical bytes (what the batch CA signs); checks the document first."""
    data = _canonical(manifest.to_json())
    _decode(data)  # the producer is held to the same rules as the consumer
    return data


def verify_manifest(
    manifest_bytes: bytes, signature: bytes, root_cert: x509.Certificate
) -> Manifest:
    """Check the manifest against the issuance root; return it, or raise ManifestError."""
    manifest = _decode(manifest_bytes)
    ca = manifest.batch_ca
    root_der = root_cert.public_bytes(serialization.Encoding.DER)
    if manifest.root_sha256 != hashlib.sha256(root_der).hexdigest():
        raise ManifestError("the manifest names another issuance root")
    try:
        ca.verify_directly_issued_by(root_cert)
    except (*_PARSE_ERRORS, InvalidSignature):
        raise ManifestError("the batch CA certificate was not issued by the root") from None
    _check_ca(ca)
    try:
        public = ca.public_key()
    except _PARSE_ERRORS:
        raise ManifestError("the batch CA public key does not parse") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ManifestError("the batch CA key is not an EC key")
    try:
        public.verify(signature, manifest_bytes, ec.ECDSA(signature_hash(public)))
    except InvalidSignature:
        raise ManifestError("bad manifest signature") from None
    return manifest


# -- decoding ------------------------------------------------------------------------------------
def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _no_duplicates(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestError(f"duplicated key {key!r}")
        out[key] = value
    return out


def _decode(data: bytes) -> Manifest:
    try:
        doc = json.loads(data.decode("ascii"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ManifestError("the manifest is not JSON") from None
    if not isinstance(doc, dict) or set(doc) != _TOP_KEYS | {"cards"}:
        raise ManifestError("the manifest is not an iotid-manifest-v1 object")
    if doc["format"] != FORMAT:
        raise ManifestError(f"unknown manifest format {doc['format']!r}")
    if _canonical(doc) != data:
        raise ManifestError("the manifest is not in canonical form")
    batch = _string(doc, "batch")
    if BATCH_NAME_PATTERN.fullmatch(batch) is None:
        raise ManifestError("bad batch name")
    algorithm = _alg(doc)
    root_sha256 = _string(doc, "root_sha256")
    if _SHA256_HEX.fullmatch(root_sha256) is None:
        raise ManifestError("root_sha256 is not a SHA-256 hex digest")
    try:
        batch_ca = x509.load_pem_x509_certificate(_string(doc, "batch_ca_pem").encode("ascii"))
        created = dt.datetime.strptime(_string(doc, "created"), _TIME_FORMAT).replace(tzinfo=dt.UTC)
    except _PARSE_ERRORS:
        raise ManifestError("bad batch CA certificate or creation time") from None
    cards = doc["cards"]
    if not isinstance(cards, list):
        raise ManifestError("cards is not a list")
    entries = tuple(_card(c, algorithm) for c in cards)
    if len({c.uid for c in entries}) != len(entries):
        raise ManifestError("a UID appears twice")
    return Manifest(batch, algorithm, batch_ca, root_sha256, created, entries)


def _string(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise ManifestError(f"{key} is not a string")
    return value


def _alg(obj: dict[str, Any]) -> KeyAlg:
    try:
        return _ALGS_BY_NAME[_string(obj, "algorithm")]
    except KeyError:
        raise ManifestError("unknown algorithm") from None


def _card(item: Any, batch_alg: KeyAlg) -> ManifestCard:
    if not isinstance(item, dict) or set(item) != _CARD_KEYS:
        raise ManifestError("a card entry has missing or unknown fields")
    uid_hex = _string(item, "uid")
    if _HEX_UPPER.fullmatch(uid_hex) is None:
        raise ManifestError("a UID is not upper-case hex")
    fingerprint = _string(item, "attestation_cert_sha256")
    if _SHA256_HEX.fullmatch(fingerprint) is None:
        raise ManifestError(f"card {uid_hex}: bad attestation certificate fingerprint")
    alg = _alg(item)
    if alg != batch_alg:
        raise ManifestError(f"card {uid_hex}: algorithm differs from the batch's")
    pem = item["identity_public_key_pem"]
    key: PublicKey | None = None
    if alg.is_rsa:
        if pem is not None:
            raise ManifestError(f"card {uid_hex}: an RSA identity key cannot be predicted")
    else:
        if not isinstance(pem, str):
            raise ManifestError(f"card {uid_hex}: an EC card needs its identity public key")
        key = _ec_key(pem, alg, uid_hex)
    return ManifestCard(bytes.fromhex(uid_hex), key, fingerprint, alg)


def _ec_key(pem: str, alg: KeyAlg, uid_hex: str) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except _PARSE_ERRORS:
        raise ManifestError(f"card {uid_hex}: identity public key does not parse") from None
    curve = ec.SECP256R1 if alg is KeyAlg.EC_P256 else ec.SECP384R1
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve):
        raise ManifestError(f"card {uid_hex}: identity key is not on the batch's curve")
    return key


def _check_ca(cert: x509.Certificate) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ManifestError("the batch CA certificate has no basicConstraints") from None
    except _PARSE_ERRORS:
        raise ManifestError("the batch CA certificate's extensions do not parse") from None
    if not constraints.ca:
        raise ManifestError("the batch CA certificate is not a CA")

"""The batch manifest (iotid.spec.manifest): canonical encoding, verification against the root,
and every rejection a fleet relies on. Keys here are in-process stand-ins for the key store."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from iotid.crypto.identity_kdf import derive_identity_key
from iotid.factory.diversify import diversify_isd_keys
from iotid.factory.keystore import PublicKey
from iotid.factory.manifest import build_manifest, write_signed_manifest
from iotid.scp03 import StaticKeys
from iotid.spec.algorithms import KeyAlg
from iotid.spec.manifest import (
    FORMAT,
    Manifest,
    ManifestCard,
    ManifestError,
    certificate_sha256,
    encode_manifest,
    verify_manifest,
)


def _ca(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    *,
    ca: bool = True,
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
        .add_extension(
            x509.BasicConstraints(ca=ca, path_length=0 if ca and issuer else None), critical=True
        )
        .sign(issuer_key, hashes.SHA384())
    )


class _Signer:
    """A Signer over an in-process key (the key store's convention: the curve's hash, DER)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    @property
    def alg(self) -> KeyAlg:
        return KeyAlg.EC_P384

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign(self, data: bytes, *, pss: bool = False) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA384()))


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _ca("root", root_key, root_key, None)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = _ca("batch CA", ca_key, root_key, root.subject)
    master = bytes(range(32))
    cards = []
    for n in range(3):
        uid = bytes([n]) * 10
        identity = derive_identity_key(master, uid, KeyAlg.EC_P256).public_key()
        cards.append(ManifestCard(uid, identity, hashlib.sha256(uid).hexdigest(), KeyAlg.EC_P256))
    manifest = build_manifest("b-1", KeyAlg.EC_P256, ca, root, cards)
    data = encode_manifest(manifest)
    sig = ca_key.sign(data, ec.ECDSA(hashes.SHA384()))
    return {
        "root_key": root_key,
        "root": root,
        "ca_key": ca_key,
        "ca": ca,
        "manifest": manifest,
        "data": data,
        "sig": sig,
    }


def _resign(pki: dict[str, Any], doc: dict[str, Any]) -> tuple[bytes, bytes]:
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return data, pki["ca_key"].sign(data, ec.ECDSA(hashes.SHA384()))


def test_round_trip_and_canonical_form(pki: dict[str, Any]) -> None:
    m = verify_manifest(pki["data"], pki["sig"], pki["root"])
    assert m == pki["manifest"]
    doc = json.loads(pki["data"])
    assert doc["format"] == FORMAT
    assert doc["root_sha256"] == certificate_sha256(pki["root"])
    assert pki["data"] == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert [c["uid"] for c in doc["cards"]] == ["00" * 10, "01" * 10, "02" * 10]
    assert m.card(b"\x01" * 10) is m.cards[1]
    assert m.created.tzinfo is not None


@pytest.mark.filterwarnings("ignore:Parsed a serial number")  # a flipped bit in the CA's serial
def test_every_single_byte_flip_is_refused(pki: dict[str, Any]) -> None:
    data = pki["data"]
    for pos in range(len(data)):
        tampered = data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]
        with pytest.raises(ManifestError):
            verify_manifest(tampered, pki["sig"], pki["root"])


def test_bad_signature_and_other_root(pki: dict[str, Any]) -> None:
    sig = bytearray(pki["sig"])
    sig[-1] ^= 1
    with pytest.raises(ManifestError, match=r"signature|JSON"):
        verify_manifest(pki["data"], bytes(sig), pki["root"])
    other_key = ec.generate_private_key(ec.SECP384R1())
    other = _ca("root", other_key, other_key, None)
    with pytest.raises(ManifestError, match="another issuance root"):
        verify_manifest(pki["data"], pki["sig"], other)


def test_batch_ca_not_issued_by_root(pki: dict[str, Any]) -> None:
    rogue_key = ec.generate_private_key(ec.SECP384R1())
    rogue = _ca("batch CA", rogue_key, rogue_key, pki["root"].subject)  # self-signed lookalike
    doc = json.loads(pki["data"])
    doc["batch_ca_pem"] = rogue.public_bytes(serialization.Encoding.PEM).decode()
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    sig = rogue_key.sign(data, ec.ECDSA(hashes.SHA384()))
    with pytest.raises(ManifestError, match="not issued by the root"):
        verify_manifest(data, sig, pki["root"])


def test_batch_ca_must_be_a_ca(pki: dict[str, Any]) -> None:
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    leaf = _ca("not a CA", leaf_key, pki["root_key"], pki["root"].subject, ca=False)
    doc = json.loads(pki["data"])
    doc["batch_ca_pem"] = leaf.public_bytes(serialization.Encoding.PEM).decode()
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(ManifestError, match="not a CA"):
        verify_manifest(data, leaf_key.sign(data, ec.ECDSA(hashes.SHA384())), pki["root"])


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda d: d["cards"].append(dict(d["cards"][0])), "UID appears twice"),
        (lambda d: d.__setitem__("format", "other"), "format"),
        (lambda d: d.pop("created"), "iotid-manifest-v1"),
        (lambda d: d.__setitem__("algorithm", "ed25519"), "algorithm"),
        (lambda d: d["cards"][0].__setitem__("uid", "ab" * 10), "upper-case"),
        (lambda d: d["cards"][0].__setitem__("algorithm", "p384"), "differs"),
        (lambda d: d["cards"][0].__setitem__("identity_public_key_pem", None), "needs its"),
        (lambda d: d["cards"][0].__setitem__("attestation_cert_sha256", "x"), "fingerprint"),
        (lambda d: d["cards"][0].__setitem__("extra", 1), "unknown fields"),
        (lambda d: d.__setitem__("batch", "../etc"), "batch name"),
        (lambda d: d.__setitem__("cards", {}), "not a list"),
    ],
)
def test_malformed_documents_refused(pki: dict[str, Any], edit: Any, why: str) -> None:
    doc = json.loads(pki["data"])
    edit(doc)
    data, sig = _resign(pki, doc)  # validly signed: the content itself must be refused
    with pytest.raises(ManifestError, match=why):
        verify_manifest(data, sig, pki["root"])


def test_non_canonical_and_non_json_refused(pki: dict[str, Any]) -> None:
    doc = json.loads(pki["data"])
    pretty = json.dumps(doc, indent=1).encode()
    with pytest.raises(ManifestError, match="canonical"):
        verify_manifest(pretty, pki["ca_key"].sign(pretty, ec.ECDSA(hashes.SHA384())), pki["root"])
    dup = pki["data"][:-1] + b',"batch":"x"}'
    with pytest.raises(ManifestError, match="duplicated key"):
        verify_manifest(dup, pki["sig"], pki["root"])
    for junk in (b"", b"\xff\xfe", b"[1,2]", b"{"):
        with pytest.raises(ManifestError):
            verify_manifest(junk, pki["sig"], pki["root"])


def test_rsa_cards_carry_no_identity_key(pki: dict[str, Any]) -> None:
    card = ManifestCard(b"\x07" * 10, None, "ab" * 32, KeyAlg.RSA_2048)
    m = build_manifest("rsa", KeyAlg.RSA_2048, pki["ca"], pki["root"], [card])
    data = encode_manifest(m)
    assert json.loads(data)["cards"][0]["identity_public_key_pem"] is None
    sig = pki["ca_key"].sign(data, ec.ECDSA(hashes.SHA384()))
    assert verify_manifest(data, sig, pki["root"]).cards[0].identity_public_key is None
    doc = json.loads(data)
    doc["cards"][0]["identity_public_key_pem"] = json.loads(pki["data"])["cards"][0][
        "identity_public_key_pem"
    ]
    with pytest.raises(ManifestError, match="cannot be predicted"):
        verify_manifest(*_resign(pki, doc), pki["root"])


def test_encode_refuses_what_verify_refuses(pki: dict[str, Any]) -> None:
    m: Manifest = pki["manifest"]
    dup = Manifest(
        m.batch, m.algorithm, m.batch_ca, m.root_sha256, m.created, (m.cards[0], m.cards[0])
    )
    with pytest.raises(ManifestError, match="twice"):
        encode_manifest(dup)


def test_write_signed_manifest(pki: dict[str, Any], tmp_path: Path) -> None:
    m, sig_path = write_signed_manifest(
        tmp_path, pki["manifest"], _Signer(pki["ca_key"]), pki["root"]
    )
    assert verify_manifest(m.read_bytes(), sig_path.read_bytes(), pki["root"]) == pki["manifest"]
    wrong = _Signer(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(ManifestError, match="not the batch CA"):
        write_signed_manifest(tmp_path / "x", pki["manifest"], wrong, pki["root"])
    assert not (tmp_path / "x").exists()


def test_isd_diversification_matches_the_published_derivation() -> None:
    # The derivation DESIGN/devpki always used: HKDF-SHA256, info "iotid-isd-v1" || UID, 48 bytes.
    master, uid = bytes(range(32)), bytes.fromhex("11223344556677889900")
    okm = HKDF(hashes.SHA256(), 48, salt=None, info=b"iotid-isd-v1" + uid).derive(master)
    keys = diversify_isd_keys(master, uid)
    assert keys == StaticKeys(okm[:16], okm[16:32], okm[32:])
    assert keys != diversify_isd_keys(master, uid[:-1] + b"\x01")
    assert not keys.is_gp_test_keys()
    with pytest.raises(ValueError, match="16 bytes"):
        diversify_isd_keys(b"short", uid)
    with pytest.raises(ValueError, match="UID"):
        diversify_isd_keys(master, b"")

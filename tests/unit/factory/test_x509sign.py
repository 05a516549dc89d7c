"""x509sign: certificates and CRLs signed through a Signer, checked against cryptography's own
builder output and against ``openssl verify`` / ``openssl crl -verify``."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from iotid.factory import x509sign
from iotid.factory.keystore import PublicKey
from iotid.factory.x509sign import X509SignError, sign_certificate, sign_crl
from iotid.spec.algorithms import KeyAlg
from support.pki import PrivateKey, new_key, write_pem
from support.pki import builder as cert_builder

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


class KeySigner:
    """A Signer over an in-process key, standing in for a backend in these tests."""

    def __init__(self, key: PrivateKey, alg: KeyAlg, *, wrong_hash: bool = False) -> None:
        self._key = key
        self._alg = alg
        self._wrong_hash = wrong_hash
        self.calls = 0

    @property
    def alg(self) -> KeyAlg:
        return self._alg

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign(self, data: bytes, *, pss: bool = False) -> bytes:
        self.calls += 1
        h: hashes.HashAlgorithm = x509sign.hash_for(self._alg)
        if self._wrong_hash:
            h = hashes.SHA512()
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(h))
        return self._key.sign(data, padding.PKCS1v15(), h)


def _builder(
    subject: str, subject_key: PublicKey, issuer: str, issuer_key: PublicKey, *, ca: bool
) -> x509.CertificateBuilder:
    return cert_builder(
        subject, subject_key, issuer=issuer, issuer_public=issuer_key, ca=ca, days=30
    )


@pytest.mark.parametrize("alg", [KeyAlg.EC_P256, KeyAlg.EC_P384, KeyAlg.RSA_2048])
def test_self_signed_matches_builder_structure(alg: KeyAlg) -> None:
    key = new_key(alg)
    signer = KeySigner(key, alg)
    builder = _builder("root", key.public_key(), "root", key.public_key(), ca=True)

    ours = sign_certificate(builder, signer)
    reference = builder.sign(key, x509sign.hash_for(alg))

    assert signer.calls == 1
    # Same TBS byte for byte, same algorithm; only the signature value may differ (ECDSA is
    # randomised; RSA PKCS#1 v1.5 is deterministic, so there it is identical too).
    assert ours.tbs_certificate_bytes == reference.tbs_certificate_bytes
    assert ours.signature_algorithm_oid == reference.signature_algorithm_oid
    assert ours.public_key() == key.public_key()
    ours.verify_directly_issued_by(ours)
    if alg.is_rsa:
        assert ours.public_bytes(serialization.Encoding.DER) == reference.public_bytes(
            serialization.Encoding.DER
        )


def test_chain_verifies_with_cryptography_and_openssl(tmp_path: Path) -> None:
    root_key, inter_key, leaf_key = (
        new_key(KeyAlg.EC_P384),
        new_key(KeyAlg.RSA_2048),
        new_key(KeyAlg.EC_P256),
    )
    root = sign_certificate(
        _builder("root", root_key.public_key(), "root", root_key.public_key(), ca=True),
        KeySigner(root_key, KeyAlg.EC_P384),
    )
    inter = sign_certificate(
        _builder("inter", inter_key.public_key(), "root", root_key.public_key(), ca=True),
        KeySigner(root_key, KeyAlg.EC_P384),
    )
    leaf = sign_certificate(
        _builder("leaf", leaf_key.public_key(), "inter", inter_key.public_key(), ca=False),
        KeySigner(inter_key, KeyAlg.RSA_2048),
    )
    inter.verify_directly_issued_by(root)
    leaf.verify_directly_issued_by(inter)
    assert leaf.public_key() == leaf_key.public_key()

    out = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            str(write_pem(tmp_path / "root.pem", root)),
            "-untrusted",
            str(write_pem(tmp_path / "inter.pem", inter)),
            str(write_pem(tmp_path / "leaf.pem", leaf)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("leaf.pem: OK")


def test_openssl_rejects_a_tampered_certificate(tmp_path: Path) -> None:
    key = new_key(KeyAlg.EC_P256)
    root = sign_certificate(
        _builder("root", key.public_key(), "root", key.public_key(), ca=True),
        KeySigner(key, KeyAlg.EC_P256),
    )
    der = bytearray(root.public_bytes(serialization.Encoding.DER))
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    index = der.index(ski)  # flip a byte of the SubjectKeyIdentifier inside the TBS
    der[index] ^= 0x01
    tampered = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(InvalidSignature):
        tampered.verify_directly_issued_by(tampered)
    (tmp_path / "t.pem").write_bytes(tampered.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "t.pem"), str(tmp_path / "t.pem")],
        capture_output=True,
        check=False,
    )
    assert out.returncode != 0


def test_crl_signed_through_signer(tmp_path: Path) -> None:
    key = new_key(KeyAlg.EC_P384)
    signer = KeySigner(key, KeyAlg.EC_P384)
    root = sign_certificate(
        _builder("root", key.public_key(), "root", key.public_key(), ca=True), signer
    )
    revoked = (
        x509.RevokedCertificateBuilder()
        .serial_number(1234)
        .revocation_date(NOW - dt.timedelta(minutes=1))
        .build()
    )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.subject)
        .last_update(NOW - dt.timedelta(minutes=1))
        .next_update(NOW + dt.timedelta(days=1))
        .add_revoked_certificate(revoked)
        .add_extension(x509.CRLNumber(7), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    crl = sign_crl(builder, signer)
    reference = builder.sign(key, hashes.SHA384())
    assert crl.tbs_certlist_bytes == reference.tbs_certlist_bytes
    assert crl.is_signature_valid(key.public_key())
    assert crl.get_revoked_certificate_by_serial_number(1234) is not None

    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    out = subprocess.run(
        [
            "openssl",
            "crl",
            "-noout",
            "-in",
            str(tmp_path / "crl.pem"),
            "-CAfile",
            str(write_pem(tmp_path / "root.pem", root)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "verify OK" in out.stderr + out.stdout


def test_signer_with_wrong_hash_is_caught() -> None:
    key = new_key(KeyAlg.EC_P256)
    builder = _builder("root", key.public_key(), "root", key.public_key(), ca=True)
    with pytest.raises(X509SignError, match="does not verify"):
        sign_certificate(builder, KeySigner(key, KeyAlg.EC_P256, wrong_hash=True))


def test_signer_with_another_key_is_caught() -> None:
    key, other = new_key(KeyAlg.EC_P256), new_key(KeyAlg.EC_P256)

    class Liar(KeySigner):
        def public_key(self) -> PublicKey:
            return key.public_key()

    builder = _builder("root", key.public_key(), "root", key.public_key(), ca=True)
    with pytest.raises(X509SignError, match="does not verify"):
        sign_certificate(builder, Liar(other, KeyAlg.EC_P256))


def test_aki_must_name_the_signer() -> None:
    key, other = new_key(KeyAlg.EC_P256), new_key(KeyAlg.EC_P256)
    builder = _builder("leaf", key.public_key(), "root", other.public_key(), ca=False)
    with pytest.raises(X509SignError, match="AuthorityKeyIdentifier"):
        sign_certificate(builder, KeySigner(key, KeyAlg.EC_P256))


def test_aes_key_cannot_sign() -> None:
    key = new_key(KeyAlg.EC_P256)
    builder = _builder("root", key.public_key(), "root", key.public_key(), ca=True)
    with pytest.raises(X509SignError, match="cannot sign"):
        sign_certificate(builder, KeySigner(key, KeyAlg.AES_128))


# --- the DER glue --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, b"\x00"),
        (0x7F, b"\x7f"),
        (0x80, b"\x81\x80"),
        (0xFF, b"\x81\xff"),
        (0x100, b"\x82\x01\x00"),
        (0x10000, b"\x83\x01\x00\x00"),
    ],
)
def test_der_length_minimal_encoding(length: int, encoded: bytes) -> None:
    assert x509sign._encode_length(length) == encoded
    tag, start, end = x509sign._read_tlv(b"\x04" + encoded + b"\x00" * length, 0)
    assert (tag, start, end - start) == (0x04, 1 + len(encoded), length)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x30", "truncated"),
        (b"\x30\x80\x00\x00", "indefinite"),
        (b"\x30\x85\x00\x00\x00\x00\x01", "long-form"),
        (b"\x30\x05\x00", "past the end"),
        (b"\x1f\x01\x00", "multi-byte"),
    ],
)
def test_der_read_rejects_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(X509SignError, match=reason):
        x509sign._read_tlv(data, 0)


def test_resign_rejects_wrong_shapes() -> None:
    seq = x509sign._tlv(0x30, b"")
    bits = x509sign._tlv(0x03, b"\x00\x01")
    good = x509sign._tlv(0x30, seq + seq + bits)
    assert x509sign._resign(good, b"\xaa\xbb") == x509sign._tlv(
        0x30, seq + seq + x509sign._tlv(0x03, b"\x00\xaa\xbb")
    )
    with pytest.raises(X509SignError, match="single outer"):
        x509sign._resign(good + b"\x00", b"")
    with pytest.raises(X509SignError, match="BIT STRING"):
        x509sign._resign(x509sign._tlv(0x30, seq + seq + seq), b"")
    with pytest.raises(X509SignError, match="trailing"):
        x509sign._resign(x509sign._tlv(0x30, seq + seq + bits + seq), b"")

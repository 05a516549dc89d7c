"""The identity signature rule (iotid.crypto.identity_rule): hash per curve, RSA-PSS salt 32,
checked against cryptography's own verify with the parameters spelled out by hand."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from iotid.crypto import identity_rule

MESSAGE = b"iotid-rotate-v1 message"


@pytest.mark.parametrize(
    ("curve", "digest"),
    [(ec.SECP256R1(), hashes.SHA256()), (ec.SECP384R1(), hashes.SHA384())],
)
def test_ec_uses_the_curve_hash(curve: ec.EllipticCurve, digest: hashes.HashAlgorithm) -> None:
    key = ec.generate_private_key(curve)
    signature = identity_rule.sign(key, MESSAGE)
    key.public_key().verify(signature, MESSAGE, ec.ECDSA(digest))  # the independent check
    assert identity_rule.verify(key.public_key(), signature, MESSAGE)
    assert not identity_rule.verify(key.public_key(), signature, MESSAGE + b"!")
    other = key.sign(MESSAGE, ec.ECDSA(hashes.SHA512()))
    assert not identity_rule.verify(key.public_key(), other, MESSAGE)


def test_rsa_is_pss_sha256_salt_32() -> None:
    key = rsa.generate_private_key(65537, 2048)
    signature = identity_rule.sign(key, MESSAGE)
    key.public_key().verify(
        signature, MESSAGE, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
    )
    assert identity_rule.verify(key.public_key(), signature, MESSAGE)
    pkcs1 = key.sign(MESSAGE, padding.PKCS1v15(), hashes.SHA256())
    assert not identity_rule.verify(key.public_key(), pkcs1, MESSAGE)


def test_other_curves_and_keys_are_refused() -> None:
    p521 = ec.generate_private_key(ec.SECP521R1())
    with pytest.raises(ValueError, match="not allowed"):
        identity_rule.sign(p521, MESSAGE)
    assert not identity_rule.verify(p521.public_key(), b"\x30\x00", MESSAGE)
    assert not identity_rule.verify(object(), b"", MESSAGE)

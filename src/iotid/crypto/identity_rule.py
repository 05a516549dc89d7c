"""The one signature rule for messages the identity key and the rotation authority sign
outside TLS: rotation proofs and acknowledgements (``iotid.spec.rotation``) and device telemetry.

Scope: ECDSA (DER) with the curve's hash (P-256: SHA-256, P-384: SHA-384,
:data:`iotid.spec.rotation.EC_HASH_BY_CURVE`) or RSA-PSS with SHA-256, MGF1-SHA-256 and a
32-byte salt (RFC 8017 §8.1). :func:`verify` answers a bool (never raises on a bad signature or
an unsupported key); :func:`sign` signs with a software key (the fleet's rotation authority).
Not in scope: how the card signs (it builds the same signatures in ``iotid.se``), TLS.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from iotid.spec.rotation import EC_HASH_BY_CURVE

__all__ = ["ec_hash", "sign", "verify"]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def ec_hash(curve: ec.EllipticCurve) -> hashes.SHA256 | hashes.SHA384 | None:
    """The rule's hash for ``curve``, or None for a curve the rule does not allow."""
    name = EC_HASH_BY_CURVE.get(curve.name)
    if name is None:
        return None
    return hashes.SHA384() if name == "sha384" else hashes.SHA256()


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def verify(key: object, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` over ``message`` is valid under the rule for ``key``."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            algorithm = ec_hash(key.curve)
            if algorithm is None:
                return False
            key.verify(signature, message, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, _pss(), hashes.SHA256())
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def sign(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, message: bytes) -> bytes:
    """``message`` signed under the rule (ValueError for a curve the rule does not allow)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = ec_hash(key.curve)
        if algorithm is None:
            raise ValueError(f"curve {key.curve.name} is not allowed")
        return key.sign(message, ec.ECDSA(algorithm))
    return key.sign(message, _pss(), hashes.SHA256())

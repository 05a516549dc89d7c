"""Deterministic derivation of a device's EC identity key from the batch master key.

Scope: ``identity_key = KDF(master_key, UID, "identity-v1")`` (DESIGN.md section 6.1), run by the
card at PROVISION and by whoever else holds the batch master key (the factory, to predict each
device's public key for the batch manifest). Both sides call this one function, so they cannot
drift.

The derivation:

1. NIST SP 800-108r1 section 4.1, KDF in counter mode with HMAC-SHA256 as the PRF
   (``cryptography``'s ``KBKDFHMAC``): a 32-bit counter before the fixed input, which is
   ``Label || 0x00 || Context || [L]_32`` with Label = ``b"identity-v1"``, Context = UID for
   generation 0 and UID || generation (32-bit big endian) after each admin re-key, and
   L = n_bits + 64 output bits (n = the order of the curve's base point).
2. FIPS 186-5 appendix A.4.1 ("key pair generation using extra random bits"): the output is
   read as a big-endian integer c and d = (c mod (n - 1)) + 1, so d lies in [1, n - 1] and its
   bias is at most 2**-64.
3. ``ec.derive_private_key(d, curve)``.

Curves: P-256 and P-384 (:data:`KeyAlg.EC_P256`, :data:`KeyAlg.EC_P384`).

RSA is not derived: ``cryptography`` has no deterministic RSA key generation (no way to seed its
prime search), and we do not hand-roll one. For an RSA batch the card *generates* the identity
key from its own RNG at PROVISION; nobody, the factory included, can predict it, so the fleet
relies on the attestation quote alone to trust an RSA identity key. :func:`derive_identity_key`
raises ``ValueError`` for an RSA algorithm.

Not covered: where the master key lives (the card's NVM, the factory's key store), the
re-key policy that advances the generation (``iotid.se.applets.provisioning``).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from iotid.spec.algorithms import KeyAlg

__all__ = [
    "EXTRA_BITS",
    "IDENTITY_KDF_LABEL",
    "MIN_MASTER_KEY_LEN",
    "derive_identity_key",
    "identity_kdf_context",
]

#: SP 800-108 Label of the identity derivation.
IDENTITY_KDF_LABEL = b"identity-v1"
#: FIPS 186-5 A.4.1: at least 64 bits more than the order's bit length.
EXTRA_BITS = 64
#: A master key shorter than 128 bits is refused.
MIN_MASTER_KEY_LEN = 16
_MAX_GENERATION = 0xFFFFFFFF

#: Curve and the order n of its base point (FIPS 186-5 / SP 800-186 section 3.2.1).
_CURVES: dict[KeyAlg, tuple[ec.EllipticCurve, int]] = {
    KeyAlg.EC_P256: (
        ec.SECP256R1(),
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ),
    KeyAlg.EC_P384: (
        ec.SECP384R1(),
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
    ),
}


def identity_kdf_context(uid: bytes, generation: int = 0) -> bytes:
    """The SP 800-108 Context: UID for generation 0, else UID || generation (u32 big endian)."""
    if not uid:
        raise ValueError("the UID must not be empty")
    if not 0 <= generation <= _MAX_GENERATION:
        raise ValueError("the re-key generation is a 32-bit unsigned integer")
    return uid if generation == 0 else uid + generation.to_bytes(4, "big")


def derive_identity_key(
    master_key: bytes, uid: bytes, alg: KeyAlg, generation: int = 0
) -> ec.EllipticCurvePrivateKey:
    """The identity private key of the device ``uid`` at re-key ``generation``.

    ValueError for RSA (see the module docstring), AES, an empty UID, a generation outside
    32 bits or a master key shorter than 16 bytes. Messages never contain key material.
    """
    if alg.is_rsa:
        raise ValueError(
            "RSA identity keys cannot be derived: cryptography offers no deterministic RSA key "
            "generation; the card generates the RSA identity key at PROVISION instead"
        )
    entry = _CURVES.get(alg)
    if entry is None:
        raise ValueError(f"{alg.name} is not an identity key algorithm")
    if len(master_key) < MIN_MASTER_KEY_LEN:
        raise ValueError(f"the master key must be at least {MIN_MASTER_KEY_LEN} bytes")
    curve, n = entry
    out_bits = n.bit_length() + EXTRA_BITS
    # NIST SP 800-108r1 section 4.1 (counter mode), PRF = HMAC-SHA256, r = 32, [L]_32.
    kdf = KBKDFHMAC(
        algorithm=hashes.SHA256(),
        mode=Mode.CounterMode,
        length=out_bits // 8,
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=IDENTITY_KDF_LABEL,
        context=identity_kdf_context(uid, generation),
        fixed=None,
    )
    c = int.from_bytes(kdf.derive(master_key), "big")
    # FIPS 186-5 appendix A.4.1 steps 5-6: d = (c mod (n - 1)) + 1.
    d = (c % (n - 1)) + 1
    return ec.derive_private_key(d, curve)

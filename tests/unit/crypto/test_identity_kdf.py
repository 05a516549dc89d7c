"""Known answers and an independent recomputation of the identity-key derivation.

Provenance of the pinned values: computed with ``iotid.crypto.identity_kdf`` (cryptography 50
KBKDFHMAC) on 2026-11-24 and cross-checked at the time, as every run does again below, against
:func:`_reference_scalar`: NIST SP 800-108r1 section 4.1 counter mode written here with the
standard library's ``hmac``/``hashlib`` only, followed by the FIPS 186-5 appendix A.4.1 reduction.
The curve orders are typed in from FIPS 186-5 / SP 800-186 section 3.2.1, independently of the
module under test.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from iotid.crypto.identity_kdf import derive_identity_key, identity_kdf_context
from iotid.spec.algorithms import KeyAlg

MASTER = bytes(range(32))
UID = bytes.fromhex("00112233445566778899")

# SP 800-186 section 3.2.1.3 (P-256) and 3.2.1.4 (P-384): the order n of the base point.
ORDERS = {
    KeyAlg.EC_P256: int(
        "115792089210356248762697446949407573529996955224135760342422259061068512044369"
    ),
    KeyAlg.EC_P384: int(
        "39402006196394479212279040100143613805079739270465446667946905279627659399113263569398"
        "956308152294913554433653942643"
    ),
}

# (alg, generation) -> (private scalar d, compressed public point), MASTER and UID above.
PINNED = {
    (KeyAlg.EC_P256, 0): (
        "df53b50897c7af2308350bfe352c57b5c40eda058c68428b554ba04ba4e11f61",
        "03a0c9f4b1212705d6309fa0206bdb02a59c0b82c0f1bd0fa45f457af2c9da5510",
    ),
    (KeyAlg.EC_P256, 1): (
        "b6a61e959115603159ae08f0789843afcf6df784623cc9b8a15e20bf1339470f",
        "03c4f9554fd23fe2c75730101b80f4a490e49943df9c187b85a6d7a63cb27836a5",
    ),
    (KeyAlg.EC_P384, 0): (
        "2b760cbb26a2def27db7a67897492494c7a03a4fadb5c7031f4d16f03c577c75"
        "3bec4c844ea9ae32422eee63fb6235e8",
        "0241957556cdc5c6ae5f2f7f936351cae30f766c68486d320523a7c5ec2caba8a0"
        "072cbd35ec470a58b2c792c7b10e16bf",
    ),
    (KeyAlg.EC_P384, 1): (
        "10e88fc2fa98b2b284cd065d7b5041ee69a9fddbee199abac7ef31a3a81a0f7d"
        "00868010d9ba4ee1776d502b33c8e2e0",
        "027785888d4b97a0f5070ebb4199220143ea7b4fbc9ed06f682270c164fc622d4f"
        "acdc6b9fc19c7d582eee4e65385f65da",
    ),
}


def _reference_scalar(master: bytes, uid: bytes, alg: KeyAlg, generation: int) -> int:
    """SP 800-108 counter mode, HMAC-SHA256, r = 32, fixed input Label || 00 || Context || [L]_32,
    then d = (c mod (n - 1)) + 1 (FIPS 186-5 A.4.1). Standard library only."""
    n = ORDERS[alg]
    out_bits = n.bit_length() + 64
    context = uid if generation == 0 else uid + generation.to_bytes(4, "big")
    fixed = b"identity-v1" + b"\x00" + context + out_bits.to_bytes(4, "big")
    stream = b""
    i = 1
    while len(stream) * 8 < out_bits:
        stream += hmac.new(master, i.to_bytes(4, "big") + fixed, hashlib.sha256).digest()
        i += 1
    c = int.from_bytes(stream[: out_bits // 8], "big")
    return (c % (n - 1)) + 1


def _compressed(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        .hex()
    )


@pytest.mark.parametrize(("alg", "generation"), sorted(PINNED))
def test_pinned_known_answers(alg: KeyAlg, generation: int) -> None:
    scalar_hex, public_hex = PINNED[(alg, generation)]
    key = derive_identity_key(MASTER, UID, alg, generation)
    assert key.private_numbers().private_value == int(scalar_hex, 16)
    assert _compressed(key) == public_hex
    assert key.curve.name == {KeyAlg.EC_P256: "secp256r1", KeyAlg.EC_P384: "secp384r1"}[alg]
    # The pins themselves agree with the independent recomputation.
    assert int(scalar_hex, 16) == _reference_scalar(MASTER, UID, alg, generation)


@given(
    master=st.binary(min_size=16, max_size=64),
    uid=st.binary(min_size=1, max_size=16),
    alg=st.sampled_from([KeyAlg.EC_P256, KeyAlg.EC_P384]),
    generation=st.one_of(st.just(0), st.integers(min_value=0, max_value=0xFFFFFFFF)),
)
def test_matches_an_independent_stdlib_recomputation(
    master: bytes, uid: bytes, alg: KeyAlg, generation: int
) -> None:
    key = derive_identity_key(master, uid, alg, generation)
    d = key.private_numbers().private_value
    assert d == _reference_scalar(master, uid, alg, generation)
    assert 1 <= d <= ORDERS[alg] - 1


def test_inputs_separate_the_keys() -> None:
    base = derive_identity_key(MASTER, UID, KeyAlg.EC_P256).private_numbers().private_value
    others = {
        derive_identity_key(MASTER, UID, KeyAlg.EC_P256, 1).private_numbers().private_value,
        derive_identity_key(MASTER, UID[:-1] + b"\x98", KeyAlg.EC_P256)
        .private_numbers()
        .private_value,
        derive_identity_key(MASTER[::-1], UID, KeyAlg.EC_P256).private_numbers().private_value,
        # Generation 0 is the bare UID, not UID || 00000000.
        derive_identity_key(MASTER, UID + bytes(4), KeyAlg.EC_P256).private_numbers().private_value,
    }
    assert base not in others
    assert len(others) == 4
    assert derive_identity_key(MASTER, UID, KeyAlg.EC_P256).private_numbers().private_value == base


def test_context_encoding() -> None:
    assert identity_kdf_context(UID) == UID
    assert identity_kdf_context(UID, 0) == UID
    assert identity_kdf_context(UID, 1) == UID + b"\x00\x00\x00\x01"
    assert identity_kdf_context(UID, 0x01020304) == UID + b"\x01\x02\x03\x04"


@pytest.mark.parametrize("alg", [KeyAlg.RSA_2048, KeyAlg.RSA_3072])
def test_rsa_cannot_be_derived(alg: KeyAlg) -> None:
    with pytest.raises(ValueError, match="RSA identity keys cannot be derived"):
        derive_identity_key(MASTER, UID, alg)


@pytest.mark.parametrize(
    ("master", "uid", "alg", "generation", "match"),
    [
        (MASTER, UID, KeyAlg.AES_128, 0, "not an identity key algorithm"),
        (MASTER[:15], UID, KeyAlg.EC_P256, 0, "at least 16 bytes"),
        (MASTER, b"", KeyAlg.EC_P256, 0, "UID must not be empty"),
        (MASTER, UID, KeyAlg.EC_P256, -1, "32-bit"),
        (MASTER, UID, KeyAlg.EC_P384, 1 << 32, "32-bit"),
    ],
)
def test_bad_inputs_are_refused_without_echoing_the_key(
    master: bytes, uid: bytes, alg: KeyAlg, generation: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match) as err:
        derive_identity_key(master, uid, alg, generation)
    assert master.hex() not in str(err.value)

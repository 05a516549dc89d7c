"""ECIES and the RSA-OAEP hybrid (iotid.crypto.ecies): known answers, an independent
re-derivation, round trips, tampering and parser fuzzing.

Provenance of the known answers: the recipient keys are the RFC 6979 §A.2.5 (P-256) and §A.2.6
(P-384) private keys; the ephemeral scalars are RFC 6979's k for message "sample" with SHA-256
(P-256) and SHA-384 (P-384), so the ephemeral point's x-coordinate is RFC 6979's published r.
The expected blobs were produced by this implementation (iotid.crypto.ecies, format v1) and are
frozen here; the test re-derives them independently: ECDH by a textbook affine scalar
multiplication in this file, HKDF (RFC 5869) with the standard library's ``hmac``, and AES-GCM.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from iotid.crypto.ecies import (
    INFO_LABEL,
    SUITE_ECIES_P256,
    SUITE_ECIES_P384,
    SUITE_RSA_OAEP_HYBRID,
    EciesError,
    blob_suite,
    ecies_decrypt,
    ecies_decrypt_with_shared_secret,
    ecies_encrypt,
    ecies_encrypt_with_ephemeral,
    ecies_parse,
    encrypt_for,
    recipient_fingerprint,
    rsa_hybrid_decrypt,
    rsa_hybrid_decrypt_with_content_key,
    rsa_hybrid_encrypt,
    rsa_hybrid_parse,
)

h = bytes.fromhex

# -- curve parameters (SEC 2 v2 §2.4.2, §2.5.1) for the independent re-derivation -----------------
P256 = {
    "p": 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
    "a": -3,
    "gx": 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    "gy": 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    "len": 32,
}
P384 = {
    "p": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFE"
        "FFFFFFFF0000000000000000FFFFFFFF",
        16,
    ),
    "a": -3,
    "gx": int(
        "AA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A38"
        "5502F25DBF55296C3A545E3872760AB7",
        16,
    ),
    "gy": int(
        "3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C0"
        "0A60B1CE1D7E819D7A431D7C90EA0E5F",
        16,
    ),
    "len": 48,
}
Point = tuple[int, int] | None


def _add(c: dict[str, int], p1: Point, p2: Point) -> Point:
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    p = c["p"]
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % p == 0:
        return None
    if p1 == p2:
        lam = (3 * x1 * x1 + c["a"]) * pow(2 * y1, -1, p) % p
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, p) % p
    x3 = (lam * lam - x1 - x2) % p
    return x3, (lam * (x1 - x3) - y1) % p


def _mul(c: dict[str, int], k: int, point: Point) -> Point:
    out: Point = None
    while k:
        if k & 1:
            out = _add(c, out, point)
        point = _add(c, point, point)
        k >>= 1
    return out


def _hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with the salt absent (HashLen zero bytes), by the standard library."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    okm, block, i = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
        i += 1
    return okm[:length]


KATS = [
    pytest.param(
        ec.SECP256R1(),
        P256,
        0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721,
        0xA6E3C57DD01ABE90086538398355DD4C3B17AA873382B0F24D6129493D8AAD60,
        "EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716",
        "0104efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf371634a7e72c4232"
        "13443152c82df94fe0f6851bf894fd91c64b19555346093ff492000102030405060708090a0b57d9"
        "9f8db0a2591a3ad83c898010348d79c8443ce8a1733bf86601e8ecdee8b49f2fe1d3e45fd295",
        id="p256",
    ),
    pytest.param(
        ec.SECP384R1(),
        P384,
        int(
            "6B9D3DAD2E1B8C1C05B19875B6659F4DE23C3B667BF297BA9AA47740787137D8"
            "96D5724E4C70A825F872C9EA60D2EDF5",
            16,
        ),
        int(
            "94ED910D1A099DAD3254E9242AE85ABDE4BA15168EAF0CA87A555FD56D10FBCA"
            "2907E3E83BA95368623B8C4686915CF9",
            16,
        ),
        "94EDBB92A5ECB8AAD4736E56C691916B3F88140666CE9FA73D64C4EA95AD133C"
        "81A648152E44ACF96E36DD1E80FABE46",
        "020494edbb92a5ecb8aad4736e56c691916b3f88140666ce9fa73d64c4ea95ad133c81a648152e44"
        "acf96e36dd1e80fabe46accfa7dfb107699dbfa50f52ed9046a980236ce3fc22a212bd1bcd5962ae"
        "b618739e5644d9e08c95d1ef4a4218ff5923000102030405060708090a0b2329757359b7f8657297"
        "f2bfc1f6360608d3faf1289559e148d1efda26ed6f622d0496f1176c3615",
        id="p384",
    ),
]
KAT_PLAIN = b"iotid forensic record #1"
KAT_AAD = b"rec-1"
KAT_NONCE = bytes(range(12))


@pytest.mark.parametrize(("curve", "params", "d", "k", "rfc6979_r", "expected"), KATS)
def test_known_answer_and_independent_rederivation(
    curve: ec.EllipticCurve,
    params: dict[str, int],
    d: int,
    k: int,
    rfc6979_r: str,
    expected: str,
) -> None:
    recipient = ec.derive_private_key(d, curve)
    ephemeral = ec.derive_private_key(k, curve)
    blob = ecies_encrypt_with_ephemeral(
        recipient.public_key(), KAT_PLAIN, KAT_AAD, ephemeral=ephemeral, nonce=KAT_NONCE
    )
    assert blob == h(expected)

    # Independent: R = k*G (x is RFC 6979's r), Z = d*R, HKDF by hmac, then AES-GCM.
    n = params["len"]
    g = (params["gx"], params["gy"])
    r_point = _mul(params, k, g)
    assert r_point is not None and r_point[0] == int(rfc6979_r, 16)
    encoded_r = b"\x04" + r_point[0].to_bytes(n, "big") + r_point[1].to_bytes(n, "big")
    assert blob[0] == (SUITE_ECIES_P256 if n == 32 else SUITE_ECIES_P384)
    assert blob[1 : 2 + 2 * n] == encoded_r
    z = _mul(params, d, r_point)
    q = _mul(params, d, g)
    assert z is not None and q is not None
    assert _mul(params, k, q) == z  # ECDH agrees from both sides
    spki = recipient.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = b"iotid-ecies-v1" + encoded_r + hashlib.sha256(spki).digest()
    key = _hkdf_sha256(z[0].to_bytes(n, "big"), info, 32)
    body = blob[2 + 2 * n :]
    assert body[:12] == KAT_NONCE
    assert AESGCM(key).decrypt(KAT_NONCE, body[12:], KAT_AAD) == KAT_PLAIN
    assert ecies_decrypt(recipient, blob, KAT_AAD) == KAT_PLAIN


def test_kdf_info_is_label_point_fingerprint() -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert INFO_LABEL == b"iotid-ecies-v1"
    assert recipient_fingerprint(key) == hashlib.sha256(spki).digest()


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["p256", "p384"])
def test_round_trip_whole_and_split(curve: ec.EllipticCurve) -> None:
    private = ec.generate_private_key(curve)
    blob = ecies_encrypt(private.public_key(), b"telemetry", b"aad")
    assert ecies_decrypt(private, blob, b"aad") == b"telemetry"
    # The card's split: parse, ECDH in the key store, then the KDF and AES-GCM.
    parsed = ecies_parse(blob)
    assert "telemetry" not in repr(parsed) and parsed.curve.name == curve.name
    shared = private.exchange(ec.ECDH(), parsed.ephemeral_public_key())
    out = ecies_decrypt_with_shared_secret(shared, parsed, b"aad", recipient=private.public_key())
    assert out == b"telemetry"
    # Fresh ephemeral key and nonce per message.
    assert ecies_encrypt(private.public_key(), b"telemetry", b"aad") != blob
    assert ecies_decrypt(private, ecies_encrypt(private.public_key(), b""), b"") == b""


def test_every_tampered_byte_is_refused() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    blob = ecies_encrypt(private.public_key(), b"0123456789abcdef", b"aad")
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(EciesError):
            ecies_decrypt(private, bytes(bad), b"aad")
    with pytest.raises(EciesError, match="authentication"):
        ecies_decrypt(private, blob, b"other aad")
    with pytest.raises(EciesError):
        ecies_decrypt(private, blob[:-1], b"aad")
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(EciesError, match="authentication"):
        ecies_decrypt(other, blob, b"aad")
    # A wrong recipient public key in the KDF info also fails (the key is bound to it).
    parsed = ecies_parse(blob)
    shared = private.exchange(ec.ECDH(), parsed.ephemeral_public_key())
    with pytest.raises(EciesError):
        ecies_decrypt_with_shared_secret(shared, parsed, b"aad", recipient=other.public_key())
    with pytest.raises(EciesError, match="length"):
        ecies_decrypt_with_shared_secret(
            shared[:-1], parsed, b"aad", recipient=private.public_key()
        )


def test_malformed_points_and_suites() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    blob = ecies_encrypt(p256.public_key(), b"x")
    off_curve = blob[:1] + b"\x04" + bytes(64) + blob[66:]
    with pytest.raises(EciesError, match="not on the curve"):
        ecies_parse(off_curve)
    compressed = blob[:1] + b"\x02" + blob[2:]
    with pytest.raises(EciesError, match="uncompressed"):
        ecies_parse(compressed)
    with pytest.raises(EciesError, match="another curve"):
        ecies_decrypt(p384, blob)
    with pytest.raises(EciesError, match="another curve"):
        ecies_decrypt_with_shared_secret(bytes(48), ecies_parse(blob), recipient=p384.public_key())
    with pytest.raises(EciesError, match="unknown suite"):
        ecies_parse(b"\x7f" + blob[1:])
    with pytest.raises(EciesError, match="empty"):
        blob_suite(b"")
    with pytest.raises(EciesError, match="not an ECIES"):
        ecies_parse(bytes([SUITE_RSA_OAEP_HYBRID]) + blob[1:])
    with pytest.raises(EciesError, match="too short"):
        ecies_parse(blob[: 1 + 65 + 12 + 15])
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    with pytest.raises(EciesError, match="P-256 and P-384"):
        ecies_encrypt(p521, b"x")
    with pytest.raises(EciesError, match="nonce"):
        ecies_encrypt_with_ephemeral(p256.public_key(), b"x", ephemeral=p256, nonce=bytes(11))
    with pytest.raises(EciesError, match="another curve"):
        ecies_encrypt_with_ephemeral(p256.public_key(), b"x", ephemeral=p384, nonce=bytes(12))


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rsa_hybrid_round_trip_and_independent_unwrap(rsa_key: rsa.RSAPrivateKey) -> None:
    blob = rsa_hybrid_encrypt(rsa_key.public_key(), b"legacy fleet data", b"aad")
    assert blob_suite(blob) == SUITE_RSA_OAEP_HYBRID
    assert int.from_bytes(blob[1:3], "big") == 256
    assert rsa_hybrid_decrypt(rsa_key, blob, b"aad") == b"legacy fleet data"
    # Independent: OAEP-SHA256 unwrap and AES-GCM by hand, from the documented layout.
    wrapped, nonce, ct = blob[3:259], blob[259:271], blob[271:]
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    key = rsa_key.decrypt(wrapped, oaep)
    assert len(key) == 32
    assert AESGCM(key).decrypt(nonce, ct, b"aad") == b"legacy fleet data"
    # The card's split.
    parsed = rsa_hybrid_parse(blob)
    assert "legacy" not in repr(parsed)
    assert rsa_hybrid_decrypt_with_content_key(key, parsed, b"aad") == b"legacy fleet data"
    with pytest.raises(EciesError, match="length"):
        rsa_hybrid_decrypt_with_content_key(key[:16], parsed, b"aad")


def test_rsa_hybrid_tampering(rsa_key: rsa.RSAPrivateKey) -> None:
    blob = rsa_hybrid_encrypt(rsa_key.public_key(), b"legacy", b"")
    for i in (0, 1, 2, 3, 100, 258, 259, 270, 271, len(blob) - 1):
        bad = bytearray(blob)
        bad[i] ^= 0x80
        with pytest.raises(EciesError):
            rsa_hybrid_decrypt(rsa_key, bytes(bad))
    with pytest.raises(EciesError):
        rsa_hybrid_decrypt(rsa_key, blob, b"aad")
    with pytest.raises(EciesError, match="too short"):
        rsa_hybrid_parse(blob[:3])
    with pytest.raises(EciesError, match="too short"):
        rsa_hybrid_parse(bytes([SUITE_RSA_OAEP_HYBRID, 0, 0]) + bytes(40))
    with pytest.raises(EciesError, match="not an RSA"):
        rsa_hybrid_parse(bytes([SUITE_ECIES_P256]) + blob[1:])


def test_encrypt_for_dispatches(rsa_key: rsa.RSAPrivateKey) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert blob_suite(encrypt_for(p384.public_key(), b"m")) == SUITE_ECIES_P384
    assert ecies_decrypt(p384, encrypt_for(p384.public_key(), b"m", b"a"), b"a") == b"m"
    assert blob_suite(encrypt_for(rsa_key.public_key(), b"m")) == SUITE_RSA_OAEP_HYBRID


@given(st.binary(max_size=400))
def test_parsers_raise_only_ecies_error(data: bytes) -> None:
    """Anything but a well-formed blob is an EciesError; a parsed blob re-assembles exactly."""
    try:
        e = ecies_parse(data)
    except EciesError:
        pass
    else:
        assert bytes([e.suite]) + e.ephemeral_point + e.nonce + e.ciphertext == data
    try:
        r = rsa_hybrid_parse(data)
    except EciesError:
        pass
    else:
        wlen = len(r.wrapped_key).to_bytes(2, "big")
        assert (
            bytes([SUITE_RSA_OAEP_HYBRID]) + wlen + r.wrapped_key + r.nonce + r.ciphertext == data
        )


@given(st.sampled_from([SUITE_ECIES_P256, SUITE_ECIES_P384]), st.binary(max_size=200))
def test_random_ecies_bodies_never_decrypt(suite: int, body: bytes) -> None:
    private = ec.generate_private_key(ec.SECP256R1() if suite == 1 else ec.SECP384R1())
    with pytest.raises(EciesError):
        ecies_decrypt(private, bytes([suite]) + body)

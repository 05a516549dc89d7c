"""The streaming MCUboot / raw image verifier (``iotid.crypto.mcuboot``) on images built here.

Scope: one valid image per key type, every rejection reason, MCUboot's KEYHASH-before-signature
rule with several signatures, chunking invariance and random tampering (Hypothesis), the bound
on buffered bytes, raw mode, trusted-key parsing and versions. Images come from a small builder
below that writes the layout imgtool 2.x writes (header, padding, body, protected TLV area,
unprotected TLV area: hash, KEYHASH, signature); imgtool itself signs the images of
``tests/integration/test_firmware_imgtool.py``.

Not covered: APDUs (``tests/unit/se/test_firmware_applet.py``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from hypothesis import given
from hypothesis import strategies as st

from iotid.crypto.firmware_raw import RawVerifier, sign_raw_image
from iotid.crypto.mcuboot import (
    ImageVersion,
    McubootVerifier,
    TrustedKey,
    raw_statement,
)
from iotid.spec.firmware import (
    IMAGE_MAGIC,
    MAX_TLV_AREA,
    TLV_INFO_MAGIC,
    TLV_PROT_INFO_MAGIC,
    HashAlg,
    ImageFlag,
    RawSignature,
    Reason,
    TlvType,
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
BODY = bytes(range(256)) * 8


# -- an image builder (imgtool's layout, little endian) -------------------------------------------
def _h(alg: HashAlg) -> hashes.HashAlgorithm:
    return hashes.SHA256() if alg is HashAlg.SHA256 else hashes.SHA384()


def digest(alg: HashAlg, data: bytes) -> bytes:
    h = hashes.Hash(_h(alg))
    h.update(data)
    return h.finalize()


def t(kind: int, value: bytes) -> bytes:
    return struct.pack("<HH", kind, len(value)) + value


def area(magic: int, tlvs: Sequence[bytes]) -> bytes:
    body = b"".join(tlvs)
    return struct.pack("<HH", magic, 4 + len(body)) + body


def hashed_part(
    body: bytes,
    *,
    prot: Sequence[bytes] = (),
    hdr_size: int = 0x200,
    flags: int = 0,
    version: tuple[int, int, int, int] = (1, 2, 3, 4),
    magic: int = IMAGE_MAGIC,
    prot_size: int | None = None,
) -> bytes:
    prot_area = area(TLV_PROT_INFO_MAGIC, prot) if prot else b""
    size = len(prot_area) if prot_size is None else prot_size
    header = struct.pack("<IIHHIIBBHII", magic, 0, hdr_size, size, len(body), flags, *version, 0)
    return header + b"\xff" * (hdr_size - len(header)) + body + prot_area


def sign_digest(key: PrivateKey, dig: bytes, alg: HashAlg) -> bytes:
    pre = utils.Prehashed(_h(alg))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(dig, ec.ECDSA(pre))
    return key.sign(dig, padding.PSS(padding.MGF1(_h(alg)), 32), pre)


def sig_tlv(key: PrivateKey) -> int:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return TlvType.ECDSA_SIG
    return TlvType.RSA2048_PSS if key.key_size == 2048 else TlvType.RSA3072_PSS


def alg_of(key: PrivateKey) -> HashAlg:
    p384 = isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    return HashAlg.SHA384 if p384 else HashAlg.SHA256


def signature_tlvs(key: PrivateKey, part: bytes, alg: HashAlg | None = None) -> list[bytes]:
    alg = alg or alg_of(key)
    keyhash = TrustedKey(key.public_key()).keyhash(alg)
    return [
        t(TlvType.KEYHASH, keyhash),
        t(sig_tlv(key), sign_digest(key, digest(alg, part), alg)),
    ]


def signed(key: PrivateKey, body: bytes = BODY, *, counter: int | None = 5, **kw: object) -> bytes:
    prot = [t(TlvType.SEC_CNT, struct.pack("<I", counter))] if counter is not None else []
    part = hashed_part(body, prot=prot, **kw)  # type: ignore[arg-type]
    alg = alg_of(key)
    hash_tlv = TlvType.SHA256 if alg is HashAlg.SHA256 else TlvType.SHA384
    return part + area(TLV_INFO_MAGIC, [t(hash_tlv, digest(alg, part)), *signature_tlvs(key, part)])


# -- keys -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {
        "p256": ec.generate_private_key(ec.SECP256R1()),
        "p384": ec.generate_private_key(ec.SECP384R1()),
        "rsa2048": rsa.generate_private_key(65537, 2048),
        "rsa3072": rsa.generate_private_key(65537, 3072),
        "other": ec.generate_private_key(ec.SECP256R1()),
    }


def trusted(*private: PrivateKey) -> list[TrustedKey]:
    return [TrustedKey(k.public_key()) for k in private]


def verify(image: bytes, keys: Sequence[TrustedKey], floor: int = 0, chunk: int = 0) -> Reason:
    v = McubootVerifier(keys)
    step = chunk or len(image) or 1
    for i in range(0, len(image), step):
        v.feed(image[i : i + step])
    verdict = v.finish(floor)
    assert verdict.valid == (verdict.reason is Reason.OK)
    return verdict.reason


P256_ONLY = "p256"


# -- valid images ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["p256", "p384", "rsa2048", "rsa3072"])
def test_valid_image_per_key_type(keys: dict[str, PrivateKey], name: str) -> None:
    key = keys[name]
    image = signed(key, counter=7)
    v = McubootVerifier(trusted(key))
    v.feed(image)
    verdict = v.finish(7)
    assert verdict.valid and verdict.reason is Reason.OK
    assert verdict.version == ImageVersion(1, 2, 3, 4)
    assert verdict.security_counter == 7
    assert verdict.hash_alg is alg_of(key)
    part = hashed_part(BODY, prot=[t(TlvType.SEC_CNT, struct.pack("<I", 7))])
    assert image.startswith(part)
    assert verdict.image_hash == digest(alg_of(key), part)


def test_valid_among_several_trusted_keys(keys: dict[str, PrivateKey]) -> None:
    ring = trusted(keys["other"], keys["p384"], keys["p256"], keys["rsa2048"])
    for name in ("p256", "p384", "rsa2048"):
        assert verify(signed(keys[name]), ring) is Reason.OK


def test_missing_security_counter_counts_as_zero(keys: dict[str, PrivateKey]) -> None:
    image = signed(keys["p256"], counter=None)
    v = McubootVerifier(trusted(keys["p256"]))
    v.feed(image)
    verdict = v.finish(0)
    assert verdict.valid and verdict.security_counter == 0
    assert verify(image, trusted(keys["p256"]), floor=1) is Reason.ROLLBACK


# -- rejections, one per reason -------------------------------------------------------------------
def test_rollback(keys: dict[str, PrivateKey]) -> None:
    assert (
        verify(signed(keys["p256"], counter=4), trusted(keys["p256"]), floor=5) is Reason.ROLLBACK
    )


def test_tampered_body_header_and_tlvs(keys: dict[str, PrivateKey]) -> None:
    key = keys["p256"]
    image = bytearray(signed(key))
    ring = trusted(key)
    body = bytearray(image)
    body[0x200 + 100] ^= 0x01
    assert verify(bytes(body), ring) is Reason.HASH_MISMATCH
    version = bytearray(image)
    version[20] += 1  # major version: hashed
    assert verify(bytes(version), ring) is Reason.HASH_MISMATCH
    sig = bytearray(image)
    sig[-5] ^= 0x40  # inside the DER signature
    assert verify(bytes(sig), ring) in (Reason.BAD_SIGNATURE, Reason.MALFORMED_TLV)


def test_bad_magic_and_header(keys: dict[str, PrivateKey]) -> None:
    ring = trusted(keys["p256"])
    assert verify(signed(keys["p256"], magic=0x96F3B83C), ring) is Reason.BAD_MAGIC
    assert verify(signed(keys["p256"], hdr_size=16), ring) is Reason.BAD_HEADER
    flags = ImageFlag.ENCRYPTED_AES128
    assert verify(signed(keys["p256"], flags=flags), ring) is Reason.UNSUPPORTED_IMAGE
    assert verify(b"", ring) is Reason.TRUNCATED
    assert verify(b"\x3d\xb8\xf3\x96" + bytes(12), ring) is Reason.TRUNCATED


def test_truncated_and_trailing(keys: dict[str, PrivateKey]) -> None:
    image = signed(keys["p256"])
    ring = trusted(keys["p256"])
    for cut in (1, 10, 100, len(image) - 0x200, len(image) - 1):
        assert verify(image[:cut], ring) is Reason.TRUNCATED
    assert verify(image + b"\x00", ring) is Reason.TRAILING_DATA
    assert verify(image + b"\xff" * 4096, ring, chunk=100) is Reason.TRAILING_DATA


def test_tlv_info_checks(keys: dict[str, PrivateKey]) -> None:
    key = keys["p256"]
    ring = trusted(key)
    # The header announces 16 protected bytes, the area is 12: its info no longer matches.
    assert verify(signed(key, prot_size=16), ring) is Reason.BAD_TLV_INFO
    # A protected area the header does not announce (MCUboot tlv.c refuses it too).
    part = hashed_part(BODY, prot=[t(TlvType.SEC_CNT, bytes(4))], prot_size=0)
    image = part + area(TLV_INFO_MAGIC, [t(TlvType.SHA256, digest(HashAlg.SHA256, part))])
    assert verify(image, ring) is Reason.BAD_TLV_INFO
    # Unprotected magic wrong.
    good = signed(key)
    end = len(hashed_part(BODY, prot=[t(TlvType.SEC_CNT, bytes(4))]))
    bad = good[:end] + struct.pack("<H", 0x6906) + good[end + 2 :]
    assert verify(bad, ring) is Reason.BAD_TLV_INFO
    # Areas above the bound are refused before anything is buffered.
    big = [t(0xA0, bytes(MAX_TLV_AREA))]
    assert verify(hashed_part(BODY, prot=big), ring) is Reason.TLV_AREA_TOO_LARGE
    huge = good[:end] + struct.pack("<HH", TLV_INFO_MAGIC, MAX_TLV_AREA + 1)
    assert verify(huge, ring) is Reason.TLV_AREA_TOO_LARGE


def _with_unprotected(key: PrivateKey, tlvs: list[bytes], prot: Sequence[bytes] = ()) -> bytes:
    part = hashed_part(BODY, prot=prot)
    return part + area(TLV_INFO_MAGIC, tlvs)


def test_unprotected_area_rules(keys: dict[str, PrivateKey]) -> None:
    key = keys["p256"]
    ring = trusted(key)
    part = hashed_part(BODY)
    hash_tlv = t(TlvType.SHA256, digest(HashAlg.SHA256, part))
    sigs = signature_tlvs(key, part)

    def reason(tlvs: list[bytes]) -> Reason:
        return verify(part + area(TLV_INFO_MAGIC, tlvs), ring)

    assert reason([hash_tlv, *sigs]) is Reason.OK
    assert reason([hash_tlv, *sigs, t(0xA0, b"vendor")]) is Reason.UNEXPECTED_TLV
    assert reason([hash_tlv, t(TlvType.PUBKEY, b"k"), *sigs]) is Reason.UNEXPECTED_TLV
    assert reason([hash_tlv, *sigs, t(TlvType.SEC_CNT, bytes(4))]) is (
        Reason.SECURITY_COUNTER_UNPROTECTED
    )
    assert reason([*sigs]) is Reason.NO_HASH
    assert reason([hash_tlv, hash_tlv, *sigs]) is Reason.UNSUPPORTED_HASH
    sha384 = t(TlvType.SHA384, digest(HashAlg.SHA384, part))
    assert reason([sha384, *sigs]) is Reason.UNSUPPORTED_HASH  # no trusted P-384 key
    assert reason([t(TlvType.SHA256, bytes(31)), *sigs]) is Reason.MALFORMED_TLV
    assert reason([t(TlvType.SHA256, bytes(32)), *sigs]) is Reason.HASH_MISMATCH
    assert reason([hash_tlv]) is Reason.NO_SIGNATURE
    assert reason([hash_tlv, sigs[1]]) is Reason.MISSING_KEYHASH
    assert reason([hash_tlv, sigs[1], sigs[0]]) is Reason.MISSING_KEYHASH  # KEYHASH after
    truncated = hash_tlv + sigs[0] + sigs[1][:-3]
    assert verify(
        part + struct.pack("<HH", TLV_INFO_MAGIC, 4 + len(truncated)) + truncated, ring
    ) is (Reason.MALFORMED_TLV)
    overrun = hash_tlv + struct.pack("<HH", 0x22, 200) + bytes(10)
    image = part + struct.pack("<HH", TLV_INFO_MAGIC, 4 + len(overrun)) + overrun
    assert verify(image, ring) is Reason.MALFORMED_TLV


def test_protected_area_rules(keys: dict[str, PrivateKey]) -> None:
    key = keys["p256"]
    ring = trusted(key)

    def reason(prot: list[bytes]) -> Reason:
        part = hashed_part(BODY, prot=prot)
        tlvs = [t(TlvType.SHA256, digest(HashAlg.SHA256, part)), *signature_tlvs(key, part)]
        return verify(part + area(TLV_INFO_MAGIC, tlvs), ring)

    assert reason([t(TlvType.SEC_CNT, bytes(4)), t(0xA0, b"custom, signed")]) is Reason.OK
    assert reason([t(TlvType.SEC_CNT, bytes(2))]) is Reason.BAD_SECURITY_COUNTER
    two = [t(TlvType.SEC_CNT, bytes(4)), t(TlvType.SEC_CNT, bytes(4))]
    assert reason(two) is Reason.BAD_SECURITY_COUNTER
    assert reason([t(TlvType.KEYHASH, bytes(32))]) is Reason.UNEXPECTED_TLV
    assert reason([t(TlvType.SHA256, bytes(32))]) is Reason.UNEXPECTED_TLV
    assert reason([struct.pack("<HH", 0x50, 9) + bytes(4)]) is Reason.MALFORMED_TLV


def test_keyhash_rules_with_several_signatures(keys: dict[str, PrivateKey]) -> None:
    good, other = keys["p256"], keys["other"]
    ring = trusted(good)
    part = hashed_part(BODY)
    hash_tlv = t(TlvType.SHA256, digest(HashAlg.SHA256, part))
    mine, foreign = signature_tlvs(good, part), signature_tlvs(other, part)

    def reason(tlvs: list[bytes]) -> Reason:
        return verify(part + area(TLV_INFO_MAGIC, tlvs), ring)

    assert reason([hash_tlv, *foreign]) is Reason.UNKNOWN_KEY  # signed by another key
    assert reason([hash_tlv, *foreign, *mine]) is Reason.OK  # the foreign one is ignored
    assert reason([hash_tlv, *mine, *foreign]) is Reason.OK
    # Our KEYHASH in front of another key's signature: a counted signature that fails.
    assert reason([hash_tlv, mine[0], foreign[1]]) is Reason.BAD_SIGNATURE
    assert reason([hash_tlv, *mine, mine[0], foreign[1]]) is Reason.BAD_SIGNATURE
    # One KEYHASH covers only the next signature (image_validate.c resets key_id).
    assert reason([hash_tlv, mine[0], foreign[1], mine[1]]) is Reason.BAD_SIGNATURE
    assert reason([hash_tlv, foreign[0], mine[1]]) is Reason.UNKNOWN_KEY
    # A KEYHASH of the right key but a signature TLV of another type.
    rsa_type = t(TlvType.RSA2048_PSS, mine[1][4:])
    assert reason([hash_tlv, mine[0], rsa_type]) is Reason.BAD_SIGNATURE
    # A truncated KEYHASH prefix does not select the key (MCUboot compares a prefix; we don't).
    prefix = t(TlvType.KEYHASH, TrustedKey(good.public_key()).keyhash(HashAlg.SHA256)[:16])
    assert reason([hash_tlv, prefix, mine[1]]) is Reason.UNKNOWN_KEY


# -- streaming ------------------------------------------------------------------------------------
@given(cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12))
def test_any_chunking_gives_the_same_verdict(
    cuts: list[int], p256_image: tuple[bytes, PrivateKey]
) -> None:
    image, key = p256_image
    v = McubootVerifier(trusted(key))
    last = 0
    for cut in sorted(set(cuts)):
        v.feed(image[last:cut])
        last = max(last, cut)
    v.feed(image[last:])
    assert v.finish(0).valid


@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_invalid(
    position: int, bit: int, p256_image: tuple[bytes, PrivateKey]
) -> None:
    image, key = p256_image
    bad = bytearray(image)
    offset = position % len(bad)
    if 0x20 <= offset < 0x200:
        return  # header padding: hashed, so a flip there is a hash mismatch too (checked below)
    bad[offset] ^= 1 << bit
    assert verify(bytes(bad), trusted(key), chunk=97) is not Reason.OK


def test_flipped_padding_byte_is_invalid(p256_image: tuple[bytes, PrivateKey]) -> None:
    image, key = p256_image
    bad = bytearray(image)
    bad[0x100] ^= 0xFF
    assert verify(bytes(bad), trusted(key)) is Reason.HASH_MISMATCH


@given(data=st.binary(max_size=600))
def test_garbage_never_crashes_and_never_verifies(
    data: bytes, keys_small: list[TrustedKey]
) -> None:
    v = McubootVerifier(keys_small)
    v.feed(data)
    assert not v.finish(0).valid


def test_body_is_never_buffered(keys: dict[str, PrivateKey]) -> None:
    key = keys["rsa3072"]
    body = bytes(5 * 1024 * 1024)
    image = signed(key, body)
    v = McubootVerifier(trusted(key))
    for i in range(0, len(image), 65535):
        v.feed(image[i : i + 65535])
        assert v.buffered <= 32 + 2 * MAX_TLV_AREA
    assert v.finish(0).valid
    tlv_bytes = len(image) - 0x200 - len(body)
    assert v.peak_buffered <= max(32, tlv_bytes)
    assert v.consumed == len(image)


# -- raw mode -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "alg"),
    [("p256", HashAlg.SHA256), ("p384", HashAlg.SHA384), ("rsa2048", HashAlg.SHA256)],
)
def test_raw_mode(keys: dict[str, PrivateKey], name: str, alg: HashAlg) -> None:
    key = keys[name]
    data = BODY * 3
    version = ImageVersion(2, 0, 1, 7)
    sig = sign_raw_image(key, data, version=version, security_counter=9, hash_alg=alg)
    ring = trusted(keys["other"], key)

    def run(payload: bytes, *, counter: int = 9, floor: int = 0, signature: bytes = sig) -> Reason:
        v = RawVerifier(
            ring, hash_alg=alg, length=len(data), version=version, security_counter=counter
        )
        for i in range(0, len(payload), 1000):
            v.feed(payload[i : i + 1000])
        verdict = v.finish(signature, floor)
        assert v.buffered == 0
        return verdict.reason

    assert run(data) is Reason.OK
    assert run(data[:-1] + b"\x00") is Reason.BAD_SIGNATURE
    assert run(data, counter=10) is Reason.BAD_SIGNATURE  # counter is signed
    assert run(data[:-1]) is Reason.TRUNCATED
    assert run(data + b"x") is Reason.TRAILING_DATA
    assert run(data, floor=10) is Reason.ROLLBACK
    assert run(data, signature=sig[:-1]) is Reason.BAD_SIGNATURE
    other = sign_raw_image(
        keys["p384"] if name != "p384" else keys["p256"],
        data,
        version=version,
        security_counter=9,
        hash_alg=alg,
    )
    assert run(data, signature=other) is Reason.BAD_SIGNATURE


def test_raw_statement_layout() -> None:
    h = bytes(range(32))
    s = raw_statement(HashAlg.SHA256, 0x0102, ImageVersion(1, 2, 0x0304, 5), 6, h)
    assert s == (
        b"iotid-firmware-raw-v1\x00\x01"
        + bytes.fromhex("01 02 0304 00000005 00000006 0000000000000102")
        + h
    )
    with pytest.raises(ValueError):
        raw_statement(HashAlg.SHA384, 1, ImageVersion(), 0, h)


def test_detached_signature_file_round_trip() -> None:
    envelope = RawSignature(HashAlg.SHA384, ImageVersion(1, 2, 3, 4), 77, b"\x30\x06sig")
    raw = envelope.encode()
    assert raw.startswith(b"IOTIDFW1\x02") and RawSignature.decode(raw) == envelope
    for bad in (b"", raw[:21], b"IOTIDFW2" + raw[8:], raw[:8] + b"\x09" + raw[9:]):
        with pytest.raises(ValueError):
            RawSignature.decode(bad)
    with pytest.raises(ValueError):
        RawSignature(HashAlg.SHA256, ImageVersion(), 1 << 32, b"x")


# -- keys and versions ----------------------------------------------------------------------------
def test_trusted_key_bytes_and_hashes(keys: dict[str, PrivateKey]) -> None:
    ec_key = TrustedKey(keys["p256"].public_key())
    spki = (
        keys["p256"]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert ec_key.mcuboot_bytes == spki and ec_key.keyhash(HashAlg.SHA256) == digest(
        HashAlg.SHA256, spki
    )
    rsa_key = TrustedKey(keys["rsa2048"].public_key())
    pkcs1 = (
        keys["rsa2048"]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    )
    assert rsa_key.mcuboot_bytes == pkcs1
    assert TrustedKey.from_spki(rsa_key.spki).keyhash(HashAlg.SHA256) == digest(
        HashAlg.SHA256, pkcs1
    )
    assert "keyhash=" in repr(ec_key)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ec.generate_private_key(ec.SECP521R1()).public_key(),
        lambda: ed25519.Ed25519PrivateKey.generate().public_key(),
        lambda: rsa.generate_private_key(65537, 1024).public_key(),  # noqa: S505 - refused
    ],
)
def test_unsupported_keys_are_refused(make: object) -> None:
    key = make()  # type: ignore[operator]
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError):
        TrustedKey.from_spki(spki)


def test_malformed_spki_is_refused(keys: dict[str, PrivateKey]) -> None:
    spki = TrustedKey(keys["p256"].public_key()).spki
    for bad in (b"", spki[:-1], spki + b"\x00", b"\x30\x00"):
        with pytest.raises(ValueError):
            TrustedKey.from_spki(bad)
    with pytest.raises(ValueError):
        McubootVerifier([])


def test_versions() -> None:
    v = ImageVersion.parse("1.2.3+4")
    assert v == ImageVersion(1, 2, 3, 4) and str(v) == "1.2.3+4"
    assert ImageVersion.parse("7") == ImageVersion(7)
    assert ImageVersion.decode(v.encode()) == v
    assert ImageVersion(1, 2) < ImageVersion(1, 10)
    for bad in ("", "1.2.3.4", "a.b", "1.-2"):
        with pytest.raises(ValueError):
            ImageVersion.parse(bad)
    with pytest.raises(ValueError):
        ImageVersion(256)
    with pytest.raises(ValueError):
        ImageVersion.decode(bytes(7))


# -- fixtures for the Hypothesis tests (module scope: built once) ---------------------------------
@pytest.fixture(scope="module")
def p256_image(keys: dict[str, PrivateKey]) -> tuple[bytes, PrivateKey]:
    return signed(keys["p256"]), keys["p256"]


@pytest.fixture(scope="module")
def keys_small(keys: dict[str, PrivateKey]) -> list[TrustedKey]:
    return trusted(keys["p256"], keys["p384"])

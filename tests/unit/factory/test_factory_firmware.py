"""Factory firmware signing (``iotid.factory.firmware``) with a local software signer.

Scope: per key type (P-256, P-384, RSA-2048, RSA-3072) the MCUboot layout byte by byte (header
fields, erased-value header padding, protected area with the security counter, unprotected TLVs
hash / KEYHASH / signature in imgtool's order), that the card's verifier
(``iotid.crypto.mcuboot.McubootVerifier``) accepts it with the right version, counter and hash,
and that any flipped byte in the signed region is refused; the detached signature file accepted
by ``RawVerifier``; parameter errors (hash not the key's, header size, counter, alignment, slot
too small) and a signer whose signatures do not verify, each refused before anything is returned.

Not covered: imgtool's opinion and the emulated card over APDUs
(``tests/integration/test_factory_firmware_imgtool.py``), the CLI's key store plumbing (same).
"""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import given
from hypothesis import strategies as st

from iotid.crypto.firmware_raw import RawVerifier
from iotid.crypto.mcuboot import McubootVerifier, TrustedKey
from iotid.factory.firmware import (
    FirmwareSigningError,
    hash_alg_for,
    sign_mcuboot,
    sign_mcuboot_detailed,
    sign_raw,
)
from iotid.factory.keystore import PublicKey
from iotid.spec.algorithms import KeyAlg
from iotid.spec.firmware import (
    IMAGE_MAGIC,
    TLV_INFO_MAGIC,
    TLV_PROT_INFO_MAGIC,
    HashAlg,
    ImageFlag,
    ImageVersion,
    RawSignature,
    Reason,
    TlvType,
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
ALGS = [KeyAlg.EC_P256, KeyAlg.EC_P384, KeyAlg.RSA_2048, KeyAlg.RSA_3072]
BODY = bytes(range(256)) * 37 + b"tail"
VERSION = ImageVersion(1, 2, 3, 4)


class LocalSigner:
    """A software :class:`~iotid.factory.keystore.Signer` (the protocol's documented behaviour)."""

    def __init__(self, key: PrivateKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        return f"LocalSigner({self.alg.name})"

    @property
    def alg(self) -> KeyAlg:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return KeyAlg.EC_P384 if self._key.curve.name == "secp384r1" else KeyAlg.EC_P256
        return KeyAlg.RSA_3072 if self._key.key_size == 3072 else KeyAlg.RSA_2048

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign(self, data: bytes, *, pss: bool = False) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            h: hashes.HashAlgorithm = (
                hashes.SHA384() if self._key.key_size == 384 else hashes.SHA256()
            )
            return self._key.sign(data, ec.ECDSA(h))
        if pss:
            return self._key.sign(
                data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
            )
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


class WrongHashSigner(LocalSigner):
    """A broken backend: P-384 signed with SHA-256."""

    def sign(self, data: bytes, *, pss: bool = False) -> bytes:
        assert isinstance(self._key, ec.EllipticCurvePrivateKey)
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


def new_key(alg: KeyAlg) -> PrivateKey:
    if alg is KeyAlg.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if alg is KeyAlg.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    return rsa.generate_private_key(65537, alg.size_bits)


@pytest.fixture(scope="module")
def signers() -> dict[KeyAlg, LocalSigner]:
    return {alg: LocalSigner(new_key(alg)) for alg in ALGS}


def digest(alg: HashAlg, data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA384() if alg is HashAlg.SHA384 else hashes.SHA256())
    h.update(data)
    return h.finalize()


def verify(image: bytes, signer: LocalSigner, floor: int = 0) -> McubootVerifier:
    verifier = McubootVerifier([TrustedKey(signer.public_key())])
    verifier.feed(image)
    return verifier


def unprotected_tlvs(image: bytes, start: int) -> list[tuple[int, bytes]]:
    magic, total = struct.unpack_from("<HH", image, start)
    assert magic == TLV_INFO_MAGIC and start + total == len(image)
    out, off = [], start + 4
    while off < len(image):
        kind, length = struct.unpack_from("<HH", image, off)
        out.append((kind, image[off + 4 : off + 4 + length]))
        off += 4 + length
    assert off == len(image)
    return out


# -- the layout, per key type ---------------------------------------------------------------------
@pytest.mark.parametrize("alg", ALGS, ids=lambda a: a.name)
def test_layout_is_imgtools(signers: dict[KeyAlg, LocalSigner], alg: KeyAlg) -> None:
    signer = signers[alg]
    signed = sign_mcuboot_detailed(BODY, signer, version=VERSION, security_counter=7)
    image = signed.image
    hash_alg = HashAlg.SHA384 if alg is KeyAlg.EC_P384 else HashAlg.SHA256
    assert signed.hash_alg is hash_alg is hash_alg_for(signer.public_key())

    # Header: magic, load address, header size, protected size, image size, flags, version, pad.
    fields = struct.unpack_from("<IIHHIIBBHII", image)
    assert fields == (IMAGE_MAGIC, 0, 0x200, 12, len(BODY), 0, 1, 2, 3, 4, 0)
    assert image[32:0x200] == b"\xff" * (0x200 - 32)  # imgtool --pad-header: erased value
    assert image[0x200 : 0x200 + len(BODY)] == BODY
    prot_at = 0x200 + len(BODY)
    assert struct.unpack_from("<HHHHI", image, prot_at) == (TLV_PROT_INFO_MAGIC, 12, 0x50, 4, 7)

    tlvs = unprotected_tlvs(image, prot_at + 12)
    kinds = [k for k, _ in tlvs]
    sig_tlv = {
        KeyAlg.EC_P256: TlvType.ECDSA_SIG,
        KeyAlg.EC_P384: TlvType.ECDSA_SIG,
        KeyAlg.RSA_2048: TlvType.RSA2048_PSS,
        KeyAlg.RSA_3072: TlvType.RSA3072_PSS,
    }[alg]
    hash_tlv = TlvType.SHA384 if hash_alg is HashAlg.SHA384 else TlvType.SHA256
    assert kinds == [hash_tlv, TlvType.KEYHASH, sig_tlv]
    assert tlvs[0][1] == digest(hash_alg, image[: prot_at + 12]) == signed.image_hash
    assert tlvs[1][1] == TrustedKey(signer.public_key()).keyhash(hash_alg) == signed.keyhash
    if alg.is_rsa:
        assert len(tlvs[2][1]) == alg.size_bits // 8

    verdict = verify(image, signer).finish(floor=7)
    assert verdict.valid, verdict
    assert (verdict.version, verdict.security_counter) == (VERSION, 7)
    assert verdict.hash_alg is hash_alg and verdict.image_hash == signed.image_hash
    assert verify(image, signer).finish(floor=8).reason is Reason.ROLLBACK
    assert (
        sign_mcuboot(BODY, signer, version=VERSION, security_counter=7)[: prot_at + 12]
        == (image[: prot_at + 12])
    )


def test_keyhash_of_ec_is_spki_and_of_rsa_is_pkcs1(signers: dict[KeyAlg, LocalSigner]) -> None:
    for alg, fmt in ((KeyAlg.EC_P256, "spki"), (KeyAlg.RSA_2048, "pkcs1")):
        key = signers[alg].public_key()
        der = key.public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo
            if fmt == "spki"
            else serialization.PublicFormat.PKCS1,
        )
        signed = sign_mcuboot_detailed(b"x", signers[alg], version=VERSION, security_counter=0)
        assert signed.keyhash == digest(HashAlg.SHA256, der)


def test_options_header_load_address_erased_value(signers: dict[KeyAlg, LocalSigner]) -> None:
    signer = signers[KeyAlg.EC_P256]
    image = sign_mcuboot(
        BODY,
        signer,
        version=ImageVersion(9),
        security_counter=0,
        header_size=0x20,
        load_address=0x2000_0000,
        erased_val=0x00,
    )
    magic, load, hdr, prot, size, flags = struct.unpack_from("<IIHHII", image)
    assert (magic, load, hdr, prot, size) == (IMAGE_MAGIC, 0x2000_0000, 0x20, 12, len(BODY))
    assert flags == ImageFlag.RAM_LOAD  # imgtool add_header: a load address means RAM load
    assert image[0x20 : 0x20 + len(BODY)] == BODY
    assert verify(image, signer).finish(floor=0).valid
    padded = sign_mcuboot(b"abc", signer, version=VERSION, security_counter=1, erased_val=0)
    assert padded[32:0x200] == bytes(0x200 - 32)
    assert verify(padded, signer).finish(floor=0).valid


def test_empty_body_is_signed(signers: dict[KeyAlg, LocalSigner]) -> None:
    signer = signers[KeyAlg.EC_P384]
    image = sign_mcuboot(b"", signer, version=VERSION, security_counter=2)
    assert verify(image, signer).finish(floor=0).valid


def test_slot_size_is_checked_like_imgtool(signers: dict[KeyAlg, LocalSigner]) -> None:
    signer = signers[KeyAlg.EC_P256]
    image = sign_mcuboot(BODY, signer, version=VERSION, security_counter=1)
    # imgtool _trailer_size, align 8: 128 sectors * 3 * 8 + 4 * 8 + 16.
    trailer = 128 * 3 * 8 + 4 * 8 + 16
    fits = len(image) + trailer + 8  # ECDSA DER length varies by a byte or two
    assert sign_mcuboot(BODY, signer, version=VERSION, security_counter=1, slot_size=fits)
    with pytest.raises(FirmwareSigningError, match="exceeds slot size"):
        sign_mcuboot(BODY, signer, version=VERSION, security_counter=1, slot_size=len(image))
    with pytest.raises(FirmwareSigningError, match="exceeds slot size"):  # align 32: bigger trailer
        sign_mcuboot(BODY, signer, version=VERSION, security_counter=1, slot_size=fits, align=32)


# -- tampering ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def p256_image(signers: dict[KeyAlg, LocalSigner]) -> bytes:
    return sign_mcuboot(BODY[:600], signers[KeyAlg.EC_P256], version=VERSION, security_counter=3)


@given(data=st.data())
def test_any_flipped_byte_is_refused(
    signers: dict[KeyAlg, LocalSigner], p256_image: bytes, data: st.DataObject
) -> None:
    offset = data.draw(st.integers(0, len(p256_image) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(p256_image)
    bad[offset] ^= 1 << bit
    assert not verify(bytes(bad), signers[KeyAlg.EC_P256]).finish(floor=0).valid


def test_other_key_is_unknown(signers: dict[KeyAlg, LocalSigner], p256_image: bytes) -> None:
    other = LocalSigner(new_key(KeyAlg.EC_P256))
    assert verify(p256_image, other).finish(floor=0).reason is Reason.UNKNOWN_KEY


# -- raw mode -------------------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ALGS, ids=lambda a: a.name)
def test_detached_signature_file(signers: dict[KeyAlg, LocalSigner], alg: KeyAlg) -> None:
    signer = signers[alg]
    envelope = RawSignature.decode(sign_raw(BODY, signer, version=VERSION, security_counter=5))
    hash_alg = HashAlg.SHA384 if alg is KeyAlg.EC_P384 else HashAlg.SHA256
    assert (envelope.hash_alg, envelope.version, envelope.security_counter) == (
        hash_alg,
        VERSION,
        5,
    )

    def check(image: bytes, counter: int = 5) -> Reason:
        verifier = RawVerifier(
            [TrustedKey(signer.public_key())],
            hash_alg=hash_alg,
            length=len(image),
            version=VERSION,
            security_counter=counter,
        )
        verifier.feed(image)
        return verifier.finish(envelope.signature, floor=0).reason

    assert check(BODY) is Reason.OK
    assert check(BODY[:-1] + b"\x00") is Reason.BAD_SIGNATURE
    assert check(BODY, counter=6) is Reason.BAD_SIGNATURE


# -- refusals -------------------------------------------------------------------------------------
def test_hash_must_be_the_keys(signers: dict[KeyAlg, LocalSigner]) -> None:
    kw = {"version": VERSION, "security_counter": 1}
    assert sign_mcuboot(b"x", signers[KeyAlg.EC_P384], hash_alg=HashAlg.SHA384, **kw)  # type: ignore[arg-type]
    for alg, wrong in (
        (KeyAlg.EC_P256, HashAlg.SHA384),
        (KeyAlg.EC_P384, HashAlg.SHA256),
        (KeyAlg.RSA_3072, HashAlg.SHA384),
    ):
        with pytest.raises(FirmwareSigningError, match="not SHA"):
            sign_mcuboot(b"x", signers[alg], hash_alg=wrong, **kw)  # type: ignore[arg-type]
        with pytest.raises(FirmwareSigningError, match="not SHA"):
            sign_raw(b"x", signers[alg], hash_alg=wrong, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"header_size": 31}, "header size"),
        ({"header_size": 0x10000}, "header size"),
        ({"security_counter": -1}, "security counter"),
        ({"security_counter": 1 << 32}, "security counter"),
        ({"load_address": 1 << 32}, "load address"),
        ({"align": 3}, "align"),
        ({"erased_val": 0x55}, "erased value"),
    ],
)
def test_bad_parameters(
    signers: dict[KeyAlg, LocalSigner], kw: dict[str, int], message: str
) -> None:
    args: dict[str, int] = {"security_counter": 1} | kw
    with pytest.raises(FirmwareSigningError, match=message):
        sign_mcuboot(b"x", signers[KeyAlg.EC_P256], version=VERSION, **args)  # type: ignore[arg-type]


def test_signer_whose_signature_does_not_verify_is_refused() -> None:
    broken = WrongHashSigner(new_key(KeyAlg.EC_P384))
    with pytest.raises(FirmwareSigningError, match="does not verify"):
        sign_mcuboot(BODY, broken, version=VERSION, security_counter=1)
    with pytest.raises(FirmwareSigningError, match="does not verify"):
        sign_raw(BODY, broken, version=VERSION, security_counter=1)


def test_unsupported_key_is_refused() -> None:
    signer = LocalSigner(ec.generate_private_key(ec.SECP521R1()))
    with pytest.raises(FirmwareSigningError, match="cannot sign firmware"):
        sign_mcuboot(b"x", signer, version=VERSION, security_counter=1)


def test_signer_algorithm_must_match_its_key(signers: dict[KeyAlg, LocalSigner]) -> None:
    class Liar(LocalSigner):
        @property
        def alg(self) -> KeyAlg:
            return KeyAlg.RSA_2048

    liar = Liar(new_key(KeyAlg.EC_P256))
    with pytest.raises(FirmwareSigningError, match="does not match"):
        sign_mcuboot(b"x", liar, version=VERSION, security_counter=1)

"""Interop: MCUboot images signed by imgtool itself (the CLI, ``imgtool keygen`` / ``imgtool sign``
2.5.0 from the venv), verified by the card through the host's bootloader API.

Scope: valid images for ECDSA P-256 / P-384 (SHA-384 picked by imgtool) and RSA-2048 / 3072 with
``imgtool verify`` agreeing (same digest); per key type the rejections: tampered body, tampered
header, truncated, signed by another key, rolled back (security counter below the floor), an
unknown unprotected TLV, the security counter moved to the unprotected area (re-signed here),
the KEYHASH removed; the last three ``imgtool verify`` accepts (it is laxer than MCUboot, whose
rules the card follows). Raw image + detached signature files. CONFIRM raises the floor only after
a VALID image, and an older imgtool image is refused afterwards. A 5 MB image verifies while the
card's transient buffer stays bounded. ``--pad`` (slot trailer appended) is refused.

Not covered: the verifier's unit rules (tests/unit/crypto/test_mcuboot.py), APDU negatives
(tests/unit/se/test_firmware_applet.py), kill -9 (tests/integration/test_firmware_tearing.py).
"""

from __future__ import annotations

import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from iotid.crypto.firmware_raw import sign_raw_image
from iotid.crypto.mcuboot import ImageVersion, TrustedKey
from iotid.host import SecurityDomainSession, SmartCardProtocol
from iotid.host.firmware import ConfirmRefusedError, FirmwareSession, perso_dgis
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.firmware import FirmwareApplet
from iotid.spec import firmware as spec
from iotid.spec.firmware import HashAlg, RawSignature, Reason, TlvType
from iotid.transport.loopback import LoopbackConnection

IMGTOOL = Path(sys.executable).with_name("imgtool")
KEY_TYPES = ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072"]
FLOOR = 3
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def imgtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IMGTOOL), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


@dataclass(frozen=True)
class Keys:
    directory: Path

    def pem(self, kind: str) -> Path:
        return self.directory / f"{kind}.pem"

    def private(self, kind: str) -> PrivateKey:
        key = serialization.load_pem_private_key(self.pem(kind).read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        return key

    def sign(self, kind: str, body: bytes, name: str, *extra: str, version: str = "1.2.3") -> Path:
        src, out = self.directory / f"{name}.in", self.directory / f"{name}.bin"
        src.write_bytes(body)
        proc = imgtool(
            "sign", "--key", self.pem(kind), "--header-size", "0x200", "--align", "8",
            "--version", version, "--slot-size", "0x800000", "--pad-header", *extra, src, out,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("imgtool-keys")
    for kind in KEY_TYPES:  # each trusted key, and another key of the same type
        for name in (kind, f"other-{kind}"):
            proc = imgtool("keygen", "-k", directory / f"{name}.pem", "-t", kind)
            assert proc.returncode == 0, proc.stderr
    return Keys(directory)


def new_card(keys: Keys, kinds: list[str] = KEY_TYPES) -> Card:
    card = Card.create(None, uid=bytes(range(10)), applets=[FirmwareApplet])
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(spec.AID)
    sd.store_data(perso_dgis([keys.private(k).public_key() for k in kinds], FLOOR))
    return card


def session(card: Card, *, extended: bool = True) -> FirmwareSession:
    return FirmwareSession(SmartCardProtocol(LoopbackConnection(card), extended=extended))


def imgtool_verify(key: Path, image: Path) -> tuple[bool, str]:
    """imgtool's opinion: (accepted, the digest it printed or '')."""
    proc = imgtool("verify", "-k", key, image)
    digest = ""
    for line in proc.stdout.splitlines():
        if line.startswith("Image digest:"):
            digest = line.split(":", 1)[1].strip()
    return proc.returncode == 0, digest


# -- image surgery for the constructed cases ------------------------------------------------------
def split(image: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(header + padding + body + protected area, the unprotected TLVs)."""
    hdr_size, prot_size, img_size = struct.unpack_from("<HHI", image, 8)
    end = hdr_size + img_size + prot_size
    magic, total = struct.unpack_from("<HH", image, end)
    assert magic == 0x6907
    tlvs, off = [], end + 4
    while off < end + total:
        kind, length = struct.unpack_from("<HH", image, off)
        tlvs.append((kind, image[off + 4 : off + 4 + length]))
        off += 4 + length
    return image[:end], tlvs


def join(part: bytes, tlvs: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("<HH", k, len(v)) + v for k, v in tlvs)
    return part + struct.pack("<HH", 0x6907, 4 + len(body)) + body


def sign_like_imgtool(key: PrivateKey, part: bytes) -> list[tuple[int, bytes]]:
    """Hash, KEYHASH and signature TLVs over ``part``, as imgtool computes them."""
    p384 = isinstance(key, ec.EllipticCurvePrivateKey) and key.key_size == 384
    alg = HashAlg.SHA384 if p384 else HashAlg.SHA256
    h = hashes.SHA384() if p384 else hashes.SHA256()
    ctx = hashes.Hash(h)
    ctx.update(part)
    digest = ctx.finalize()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        sig, kind = key.sign(digest, ec.ECDSA(utils.Prehashed(h))), TlvType.ECDSA_SIG
    else:
        sig = key.sign(digest, padding.PSS(padding.MGF1(h), 32), utils.Prehashed(h))
        kind = TlvType.RSA2048_PSS if key.key_size == 2048 else TlvType.RSA3072_PSS
    keyhash = TrustedKey(key.public_key()).keyhash(alg)
    hash_tlv = TlvType.SHA384 if p384 else TlvType.SHA256
    return [(hash_tlv, digest), (TlvType.KEYHASH, keyhash), (kind, sig)]


def move_counter_to_unprotected(image: bytes, key: PrivateKey) -> bytes:
    part, _ = split(image)
    hdr_size, _, img_size = struct.unpack_from("<HHI", image, 8)
    prot = part[hdr_size + img_size :]
    assert struct.unpack_from("<HHHH", prot) == (0x6908, 12, TlvType.SEC_CNT, 4)
    counter = prot[8:12]
    header = bytearray(part[: hdr_size + img_size])
    struct.pack_into("<H", header, 10, 0)  # no protected area any more
    new_part = bytes(header)
    return join(new_part, [*sign_like_imgtool(key, new_part), (TlvType.SEC_CNT, counter)])


# -- valid images, imgtool verify agrees ----------------------------------------------------------
@pytest.mark.parametrize("kind", KEY_TYPES)
def test_imgtool_images_valid(keys: Keys, kind: str) -> None:
    image = keys.sign(kind, bytes(range(256)) * 50, f"valid-{kind}", "--security-counter", "5")
    card = new_card(keys)
    for extended in (False, True):
        verdict = session(card, extended=extended).verify_image(image)
        assert verdict.valid, verdict
        assert (verdict.version, verdict.security_counter) == (ImageVersion(1, 2, 3), 5)
        assert verdict.hash_alg is (HashAlg.SHA384 if kind == "ecdsa-p384" else HashAlg.SHA256)
    accepted, digest = imgtool_verify(keys.pem(kind), image)
    assert accepted and verdict.image_hash is not None and digest == verdict.image_hash.hex()
    # A card that trusts only this key says the same.
    assert session(new_card(keys, [kind])).verify_image(image).valid


def test_p384_with_explicit_sha384(keys: Keys) -> None:
    image = keys.sign("ecdsa-p384", b"\x01" * 3000, "p384-sha", "--sha", "384")
    assert session(new_card(keys, ["ecdsa-p384"])).verify_image(image).security_counter == 0


# -- rejections, per key type ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", KEY_TYPES)
def test_imgtool_images_rejected(keys: Keys, kind: str, tmp_path: Path) -> None:
    body = bytes(range(251)) * 40
    good = keys.sign(kind, body, f"good-{kind}", "--security-counter", "5").read_bytes()
    key = keys.private(kind)
    part, tlvs = split(good)

    def tamper(offset: int) -> bytes:
        bad = bytearray(good)
        bad[offset] ^= 0x01
        return bytes(bad)

    cases: dict[str, tuple[bytes, Reason, bool]] = {
        # name: (image, our reason, what imgtool verify says)
        "tampered body": (tamper(0x200 + 1234), Reason.HASH_MISMATCH, False),
        "tampered header": (tamper(22), Reason.HASH_MISMATCH, False),  # revision
        "truncated": (good[:-7], Reason.TRUNCATED, False),
        "wrong key": (
            keys.sign(f"other-{kind}", body, f"o-{kind}", "--security-counter", "5").read_bytes(),
            Reason.UNKNOWN_KEY,
            False,
        ),
        "rollback": (
            keys.sign(kind, body, f"old-{kind}", "--security-counter", "2").read_bytes(),
            Reason.ROLLBACK,
            True,
        ),
        "unknown unprotected TLV": (
            join(part, [*tlvs, (0xA0, b"vendor")]),
            Reason.UNEXPECTED_TLV,
            True,
        ),
        "counter unprotected": (
            move_counter_to_unprotected(good, key),
            Reason.SECURITY_COUNTER_UNPROTECTED,
            True,
        ),
        "no KEYHASH": (
            join(part, [t for t in tlvs if t[0] != TlvType.KEYHASH]),
            Reason.MISSING_KEYHASH,
            True,
        ),
    }
    card = new_card(keys)
    s = session(card)
    for name, (image, reason, imgtool_accepts) in cases.items():
        path = tmp_path / f"{name.replace(' ', '-')}.bin"
        path.write_bytes(image)
        verdict = s.verify_image(path)
        assert not verdict.valid and verdict.code is reason, f"{kind} {name}: {verdict}"
        assert imgtool_verify(keys.pem(kind), path)[0] is imgtool_accepts, f"{kind} {name}"
    assert s.verify_image(keys.directory / f"good-{kind}.bin").valid


def test_padded_slot_image_is_refused(keys: Keys) -> None:
    image = keys.sign("ecdsa-p256", b"\x02" * 1000, "padded", "--pad")
    verdict = session(new_card(keys)).verify_image(image)
    assert verdict.code is Reason.TRAILING_DATA


# -- raw mode -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KEY_TYPES)
def test_raw_image_with_detached_signature_files(keys: Keys, kind: str, tmp_path: Path) -> None:
    data = bytes(range(256)) * 300
    alg = HashAlg.SHA384 if kind == "ecdsa-p384" else HashAlg.SHA256
    version = ImageVersion(3, 1, 0, 42)
    sig = sign_raw_image(
        keys.private(kind), data, version=version, security_counter=6, hash_alg=alg
    )
    (tmp_path / "fw.bin").write_bytes(data)
    (tmp_path / "fw.sig").write_bytes(sig)
    s = session(new_card(keys))

    def check(image: str, **kw: object) -> Reason | None:
        args = {"version": version, "security_counter": 6, "hash_alg": alg} | kw
        return s.verify_image(
            tmp_path / image,
            signature=(tmp_path / "fw.sig").read_bytes(),
            **args,  # type: ignore[arg-type]
        ).code

    assert check("fw.bin") is Reason.OK
    # The detached signature file the CLI takes (``verify-firmware IMAGE --signature FILE``).
    envelope = RawSignature(alg, version, 6, sig).encode()
    assert s.verify_image(tmp_path / "fw.bin", signature=envelope).valid
    (tmp_path / "bad.bin").write_bytes(data[:-1] + b"\x00")
    assert check("bad.bin") is Reason.BAD_SIGNATURE
    assert check("fw.bin", security_counter=7) is Reason.BAD_SIGNATURE
    assert check("fw.bin", version=ImageVersion(3, 1, 1, 42)) is Reason.BAD_SIGNATURE
    other = sign_raw_image(
        keys.private(f"other-{kind}"), data, version=version, security_counter=6, hash_alg=alg
    )
    (tmp_path / "fw.sig").write_bytes(other)
    assert check("fw.bin") is Reason.BAD_SIGNATURE


# -- confirm and rollback -------------------------------------------------------------------------
def test_confirm_raises_the_floor_and_older_images_are_refused(keys: Keys) -> None:
    card = new_card(keys)
    s = session(card)
    v5 = keys.sign("ecdsa-p256", b"v5" * 500, "v5", "--security-counter", "5", version="1.5.0")
    v4 = keys.sign("ecdsa-p256", b"v4" * 500, "v4", "--security-counter", "4", version="1.4.0")
    v6 = keys.sign("rsa-2048", b"v6" * 500, "v6", "--security-counter", "6", version="1.6.0")
    bad6 = bytearray(v6.read_bytes())
    bad6[0x210] ^= 0xFF
    assert s.verify_image(v4).valid  # 4 >= floor 3
    assert s.verify_image(keys.directory / "v4.in").code is Reason.BAD_MAGIC  # unsigned input
    with pytest.raises(ConfirmRefusedError):
        s.confirm()
    assert s.verify_image(v5).valid
    assert s.confirm() == 5 and s.state().floor == 5
    assert s.verify_image(v4).code is Reason.ROLLBACK
    with pytest.raises(ConfirmRefusedError):
        s.confirm()
    tampered = keys.directory / "bad6.bin"
    tampered.write_bytes(bytes(bad6))
    assert s.verify_image(tampered).code is Reason.HASH_MISMATCH
    with pytest.raises(ConfirmRefusedError):
        s.confirm()  # the last verdict is INVALID: the floor stays
    assert s.state().floor == 5
    assert s.verify_image(v6).valid
    assert s.confirm() == 6


# -- the body is never buffered -------------------------------------------------------------------
def test_five_megabyte_image_with_bounded_transient_buffer(keys: Keys) -> None:
    body = bytes(range(256)) * (5 * 1024 * 4)  # 5 MiB
    image = keys.sign("rsa-3072", body, "big", "--security-counter", "9")
    card = new_card(keys)
    verdict = session(card).verify_image(image)
    assert verdict.valid and verdict.security_counter == 9
    app = card.applet(spec.AID)
    assert isinstance(app, FirmwareApplet)
    tlv_area = image.stat().st_size - 0x200 - len(body)
    assert app.transient_buffer_peak <= tlv_area < 1024
    assert app.transient_buffer_size == 0

"""Interop: firmware the factory signs (``iotid.factory.firmware``, ``iotid factory firmware sign``)
checked by upstream ``imgtool`` 2.5.0 (the venv's CLI) and by an emulated card personalised with
the signing key as its firmware issuance key.

Scope, per key type (ECDSA P-256, P-384, RSA-2048, RSA-3072; keys made by ``imgtool keygen``,
public keys exported by ``imgtool getpub``): ``imgtool verify`` accepts our images and prints our
image hash; the card answers VALID with the version and security counter signed; the image
``imgtool sign --pad-header`` writes from the same input and key has the same bytes up to the
signature (header fields, padding, body, protected area, TLV order, hash and KEYHASH values) and
the same ``imgtool dumpinfo`` structure; the slot-size limit is imgtool's; a flipped byte makes
``imgtool verify`` fail and the card answer INVALID; the raw image with its detached signature
file verifies on the card, and a tampered one does not. The CLI signs with a key from the factory
key store (software backend), unlocked by the quorum shares or the line key.

Not covered: the layout rules in isolation (``tests/unit/factory/test_factory_firmware.py``), the
card's verifier rules (``tests/integration/test_firmware_imgtool.py``).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from typer.testing import CliRunner, Result

from iotid.cli.factory_firmware import firmware_app
from iotid.factory import ceremony
from iotid.factory.batch import FIRMWARE_KEY, create_batch
from iotid.factory.ceremony import init_ceremony, quorum_unlock
from iotid.factory.ceremony_verify import verify_ceremony
from iotid.factory.firmware import FirmwareSigningError, sign_mcuboot, sign_raw
from iotid.factory.keystore import PublicKey, Tier, fingerprint
from iotid.factory.line import read_line_key
from iotid.factory.shares import read_share_file
from iotid.factory.softhsm import provision_softhsm_token, unload_module
from iotid.factory.stores import create_store, open_store
from iotid.host import SecurityDomainSession, SmartCardProtocol
from iotid.host.firmware import FirmwareSession, Verdict, perso_dgis
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.firmware import FirmwareApplet
from iotid.spec import firmware as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.firmware import HashAlg, ImageVersion, Reason
from iotid.transport.loopback import LoopbackConnection

IMGTOOL = Path(sys.executable).with_name("imgtool")
KINDS = {
    "ecdsa-p256": KeyAlg.EC_P256,
    "ecdsa-p384": KeyAlg.EC_P384,
    "rsa-2048": KeyAlg.RSA_2048,
    "rsa-3072": KeyAlg.RSA_3072,
}
VERSION = ImageVersion(1, 2, 3, 4)
BODY = bytes(range(256)) * 40 + b"factory"
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def imgtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IMGTOOL), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


class LocalSigner:
    """A software :class:`~iotid.factory.keystore.Signer` over a PEM key imgtool made."""

    def __init__(self, key: PrivateKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        return f"LocalSigner({self.alg.name})"

    @property
    def alg(self) -> KeyAlg:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return KeyAlg.EC_P384 if self._key.key_size == 384 else KeyAlg.EC_P256
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
            pss_padding = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
            return self._key.sign(data, pss_padding, hashes.SHA256())
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


@dataclass(frozen=True)
class Keys:
    directory: Path

    def pem(self, kind: str) -> Path:
        return self.directory / f"{kind}.pem"

    def pub(self, kind: str) -> Path:
        return self.directory / f"{kind}.pub.pem"

    def signer(self, kind: str) -> LocalSigner:
        key = serialization.load_pem_private_key(self.pem(kind).read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
        return LocalSigner(key)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("factory-fw-keys")
    out = Keys(directory)
    for kind in KINDS:  # each signing key, and another key of the same type
        for name in (kind, f"other-{kind}"):
            proc = imgtool("keygen", "-k", out.pem(name), "-t", kind)
            assert proc.returncode == 0, proc.stderr
            proc = imgtool("getpub", "-k", out.pem(name), "-e", "pem", "-o", out.pub(name))
            assert proc.returncode == 0, proc.stderr
    return out


def new_card(public_keys: list[PublicKey], floor: int = 0) -> Card:
    """A card whose firmware applet trusts ``public_keys`` (personalised through the ISD)."""
    card = Card.create(None, uid=bytes(range(10)), applets=[FirmwareApplet])
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(spec.AID)
    sd.store_data(perso_dgis(public_keys, floor))
    return card


def card_verify(card: Card, image: Path, signature: bytes | None = None) -> Verdict:
    session = FirmwareSession(SmartCardProtocol(LoopbackConnection(card), extended=True))
    return session.verify_image(image, signature=signature)


def imgtool_verify(pub: Path, image: Path) -> tuple[bool, str]:
    """(accepted, the image digest imgtool printed or '')."""
    proc = imgtool("verify", "-k", pub, image)
    digest = ""
    for line in proc.stdout.splitlines():
        if line.startswith("Image digest:"):
            digest = line.split(":", 1)[1].strip()
    return proc.returncode == 0, digest


def imgtool_sign(keys: Keys, kind: str, src: Path, out: Path, *extra: str) -> bytes:
    proc = imgtool(
        "sign", "--key", keys.pem(kind), "--header-size", "0x200", "--align", "8",
        "--version", str(VERSION), "--security-counter", "7", "--pad-header", *extra, src, out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


def dumpinfo(image: Path) -> dict[str, object]:
    proc = imgtool("dumpinfo", "-f", "json", image)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert isinstance(info, dict)
    return info


def signed_region(image: bytes) -> bytes:
    hdr_size, prot_size, img_size = struct.unpack_from("<HHI", image, 8)
    return image[: hdr_size + img_size + prot_size]


def flip(image: bytes, offset: int) -> bytes:
    bad = bytearray(image)
    bad[offset] ^= 0x01
    return bytes(bad)


# -- MCUboot images, per key type -----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_imgtool_and_card_accept_our_images(keys: Keys, kind: str, tmp_path: Path) -> None:
    signer = keys.signer(kind)
    image = sign_mcuboot(BODY, signer, version=VERSION, security_counter=7)
    path = tmp_path / "fw.signed.bin"
    path.write_bytes(image)

    accepted, digest = imgtool_verify(keys.pub(kind), path)
    assert accepted, kind
    card = new_card([signer.public_key()], floor=7)
    verdict = card_verify(card, path)
    assert verdict.valid, verdict
    assert (verdict.version, verdict.security_counter) == (VERSION, 7)
    assert verdict.hash_alg is (HashAlg.SHA384 if kind == "ecdsa-p384" else HashAlg.SHA256)
    assert verdict.image_hash is not None and digest == verdict.image_hash.hex()

    # One flipped byte in the header, the body, the protected area, the signature.
    prot_at = 0x200 + len(BODY)
    for offset in (22, 0x200 + 100, prot_at + 8, len(image) - 5):
        bad = tmp_path / f"bad-{offset}.bin"
        bad.write_bytes(flip(image, offset))
        assert not imgtool_verify(keys.pub(kind), bad)[0], (kind, offset)
        verdict = card_verify(card, bad)
        assert not verdict.valid, (kind, offset)
        expected = Reason.BAD_SIGNATURE if offset > prot_at + 12 else Reason.HASH_MISMATCH
        assert verdict.code is expected, (kind, offset, verdict)
    # A card trusting another key of the same type does not know the signer; nor does imgtool.
    other = f"other-{kind}"
    assert card_verify(new_card([keys.signer(other).public_key()]), path).code is (
        Reason.UNKNOWN_KEY
    )
    assert not imgtool_verify(keys.pub(other), path)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_same_layout_as_imgtool(keys: Keys, kind: str, tmp_path: Path) -> None:
    src = tmp_path / "fw.bin"
    src.write_bytes(BODY)
    theirs = imgtool_sign(keys, kind, src, tmp_path / "theirs.bin", "--slot-size", "0x100000")
    ours = sign_mcuboot(BODY, keys.signer(kind), version=VERSION, security_counter=7)
    (tmp_path / "ours.bin").write_bytes(ours)

    # Everything up to the signature is the same bytes: header, padding, body, protected area,
    # then the unprotected TLV info (ECDSA DER lengths vary by a byte or two), hash, KEYHASH.
    assert signed_region(ours) == signed_region(theirs)
    mine, upstream = dumpinfo(tmp_path / "ours.bin"), dumpinfo(tmp_path / "theirs.bin")
    assert mine["header"] == upstream["header"]
    mine_tlvs, their_tlvs = mine["tlv_area"], upstream["tlv_area"]
    assert isinstance(mine_tlvs, dict) and isinstance(their_tlvs, dict)
    assert mine_tlvs["tlvs_prot"] == their_tlvs["tlvs_prot"]
    assert mine_tlvs["tlv_hdr_prot"] == their_tlvs["tlv_hdr_prot"]
    ours_tlvs, theirs_tlvs = mine_tlvs["tlvs"], their_tlvs["tlvs"]
    assert [(t["type_name"]) for t in ours_tlvs] == [(t["type_name"]) for t in theirs_tlvs]
    assert [t["data"] for t in ours_tlvs[:2]] == [t["data"] for t in theirs_tlvs[:2]]
    if kind.startswith("rsa"):  # fixed-length signatures: the whole layout is the same
        assert len(ours) == len(theirs) and mine_tlvs["tlv_hdr"] == their_tlvs["tlv_hdr"]


def test_load_address_like_imgtool(keys: Keys, tmp_path: Path) -> None:
    src = tmp_path / "fw.bin"
    src.write_bytes(BODY)
    extra = ("--slot-size", "0x100000", "--load-addr", "0x20000000")
    theirs = imgtool_sign(keys, "rsa-2048", src, tmp_path / "theirs.bin", *extra)
    ours = sign_mcuboot(
        BODY, keys.signer("rsa-2048"), version=VERSION, security_counter=7, load_address=0x2000_0000
    )
    assert signed_region(ours) == signed_region(theirs)


def test_slot_size_limit_like_imgtool(keys: Keys, tmp_path: Path) -> None:
    src = tmp_path / "fw.bin"
    src.write_bytes(BODY)
    signer = keys.signer("rsa-2048")  # fixed-length signature: an exact boundary
    size = len(sign_mcuboot(BODY, signer, version=VERSION, security_counter=7))
    trailer = 128 * 3 * 8 + 4 * 8 + 16
    for slot in (size + trailer, size + trailer - 1):
        fits = slot >= size + trailer
        proc = imgtool(
            "sign", "--key", keys.pem("rsa-2048"), "--header-size", "0x200", "--align", "8",
            "--version", str(VERSION), "--security-counter", "7", "--pad-header",
            "--slot-size", hex(slot), src, tmp_path / "out.bin",
        )  # fmt: skip
        assert (proc.returncode == 0) is fits, proc.stderr
        if fits:
            assert sign_mcuboot(BODY, signer, version=VERSION, security_counter=7, slot_size=slot)
        else:
            with pytest.raises(FirmwareSigningError, match="exceeds slot size"):
                sign_mcuboot(BODY, signer, version=VERSION, security_counter=7, slot_size=slot)


# -- raw images with a detached signature file ----------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_raw_image_and_signature_file_verify_on_the_card(
    keys: Keys, kind: str, tmp_path: Path
) -> None:
    signer = keys.signer(kind)
    sig = sign_raw(BODY, signer, version=VERSION, security_counter=9)
    (tmp_path / "fw.bin").write_bytes(BODY)
    card = new_card([signer.public_key()], floor=9)
    verdict = card_verify(card, tmp_path / "fw.bin", signature=sig)
    assert verdict.valid, verdict
    assert (verdict.version, verdict.security_counter) == (VERSION, 9)
    (tmp_path / "bad.bin").write_bytes(flip(BODY, 1000))
    assert card_verify(card, tmp_path / "bad.bin", signature=sig).code is Reason.BAD_SIGNATURE
    assert card_verify(
        new_card([signer.public_key()], floor=10), tmp_path / "fw.bin", sig
    ).code is (Reason.ROLLBACK)


# -- signed with keys from the factory key store (software backend, then SoftHSM2) ----------------
CUSTODIANS = ["alice", "bob", "carol"]
STORE_KEYS = {  # kind -> key name in the store (the batch makes "firmware", P-256)
    "ecdsa-p256": FIRMWARE_KEY,
    "ecdsa-p384": "fw-p384",
    "rsa-2048": "fw-rsa2048",
    "rsa-3072": "fw-rsa3072",
}
QUORUM_KEY = "fw-quorum"  # a P-256 firmware key in the QUORUM tier
runner = CliRunner()


@dataclass(frozen=True)
class Factory:
    directory: Path
    shares: tuple[Path, ...]
    line_key: Path

    def public_key(self, name: str) -> PublicKey:
        return open_store(self.directory).public_key(name)

    def steps(self, action: str) -> list[dict[str, object]]:
        record = ceremony.open_record(self.directory)
        return [dict(e.details) for e in record.entries if e.action == action]


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Factory:
    directory = tmp_path_factory.mktemp("factory") / "site"
    result = init_ceremony(directory, 2, 3, CUSTODIANS, operator="olivia")
    shares = tuple(s.path for s in result.share_files)
    info = create_batch(directory, "b1", "p256", shares[:2])
    store = quorum_unlock(directory, shares[1:])
    for kind, name in STORE_KEYS.items():
        if name != FIRMWARE_KEY:
            store.generate(name, KINDS[kind], tier=Tier.OPERATIONAL)
    store.generate(QUORUM_KEY, KeyAlg.EC_P256, tier=Tier.QUORUM)
    store.lock()
    return Factory(directory, shares, info.line_key_path)


def sign_cli(factory: Factory, *args: str | Path) -> Result:
    """``iotid factory firmware sign --factory DIR ARGS``."""
    argv = ["sign", "--factory", str(factory.directory), *map(str, args)]
    return runner.invoke(firmware_app, argv)


def write_pub(public_key: PublicKey, path: Path) -> Path:
    path.write_bytes(
        public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.mark.parametrize("kind", KINDS)
def test_store_signer_images_verify(factory: Factory, kind: str, tmp_path: Path) -> None:
    store = open_store(factory.directory)
    store.unlock_operational(read_line_key(factory.line_key))
    signer = store.signer(STORE_KEYS[kind])
    image = tmp_path / "fw.signed.bin"
    image.write_bytes(sign_mcuboot(BODY, signer, version=VERSION, security_counter=7))
    pub = write_pub(signer.public_key(), tmp_path / "pub.pem")
    assert imgtool_verify(pub, image)[0]
    verdict = card_verify(new_card([signer.public_key()]), image)
    assert verdict.valid and (verdict.version, verdict.security_counter) == (VERSION, 7)


def test_cli_signs_mcuboot_with_the_line_key(factory: Factory, tmp_path: Path) -> None:
    (tmp_path / "app.bin").write_bytes(BODY)
    out = tmp_path / "app.signed.bin"
    before = len(factory.steps("firmware.signed"))
    result = sign_cli(
        factory, tmp_path / "app.bin", out, "--version", "2.0.1+77",
        "--security-counter", "12", "--line-key", factory.line_key,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "version 2.0.1+77" in result.output and "security counter 12" in result.output
    public = factory.public_key(FIRMWARE_KEY)
    pub = write_pub(public, tmp_path / "firmware.pub.pem")
    accepted, digest = imgtool_verify(pub, out)
    assert accepted
    card = new_card([public], floor=12)
    verdict = card_verify(card, out)
    assert verdict.valid, verdict
    assert (verdict.version, verdict.security_counter) == (ImageVersion(2, 0, 1, 77), 12)
    # The signing is in the ceremony record, which still verifies.
    steps = factory.steps("firmware.signed")
    assert len(steps) == before + 1
    assert steps[-1]["image_hash"] == digest and steps[-1]["key"] == FIRMWARE_KEY
    assert steps[-1]["key_fingerprint"] == fingerprint(public)
    assert steps[-1]["security_counter"] == 12 and steps[-1]["format"] == "mcuboot"
    verify_ceremony(factory.directory)
    # A flipped byte: imgtool and the card both refuse.
    bad = tmp_path / "bad.bin"
    bad.write_bytes(flip(out.read_bytes(), 0x200 + 7))
    assert not imgtool_verify(pub, bad)[0]
    assert card_verify(card, bad).code is Reason.HASH_MISMATCH


def test_cli_detached_with_the_quorum(factory: Factory, tmp_path: Path) -> None:
    (tmp_path / "app.bin").write_bytes(BODY)
    out, sig = tmp_path / "app.raw", tmp_path / "app.sig"
    result = sign_cli(
        factory, "--key", QUORUM_KEY, tmp_path / "app.bin", out, "--version", "3.1",
        "--security-counter", "4", "--detached", sig,
        "--shares", factory.shares[0], "--shares", factory.shares[2],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == BODY
    card = new_card([factory.public_key(QUORUM_KEY)], floor=4)
    verdict = card_verify(card, out, signature=sig.read_bytes())
    assert verdict.valid, verdict
    assert (verdict.version, verdict.security_counter) == (ImageVersion(3, 1), 4)
    (tmp_path / "bad.raw").write_bytes(flip(BODY, 3))
    assert card_verify(card, tmp_path / "bad.raw", signature=sig.read_bytes()).code is (
        Reason.BAD_SIGNATURE
    )
    step = factory.steps("firmware.signed")[-1]
    assert step["format"] == "raw" and step["key"] == QUORUM_KEY


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "needs"),  # locked: neither shares nor line key
        (("--shares", 0), "share"),  # one share of a 2-of-3 quorum
        (("--key", QUORUM_KEY, "--line-key", "LINE"), "needs"),  # quorum key, line key only
        (("--key", "no-such-key", "--line-key", "LINE"), "no-such-key"),
        (("--line-key", "LINE", "--version", "1.x"), "not a version"),
        (("--line-key", "LINE", "--header-size", "16"), "header size"),
        (("--line-key", "LINE", "--slot-size", "0x1000"), "exceeds slot size"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(
    factory: Factory, tmp_path: Path, extra: tuple[str | int, ...], message: str
) -> None:
    (tmp_path / "app.bin").write_bytes(BODY)
    out = tmp_path / "app.signed.bin"
    args: list[str | Path] = []
    for item in extra:
        if isinstance(item, int):
            args.append(factory.shares[item])
        else:
            args.append(factory.line_key if item == "LINE" else item)
    if "--version" not in args:
        args += ["--version", "1.0.0"]
    before = len(factory.steps("firmware.signed"))
    result = sign_cli(factory, tmp_path / "app.bin", out, "--security-counter", "1", *args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "app.bin"]
    assert len(factory.steps("firmware.signed")) == before
    for share in factory.shares:  # no share word ever printed
        assert read_share_file(share).split()[3] not in result.output


def test_cli_refuses_unwritable_outputs_before_signing(factory: Factory, tmp_path: Path) -> None:
    (tmp_path / "app.bin").write_bytes(BODY)
    before = len(factory.steps("firmware.signed"))
    common = ("--version", "1.0", "--security-counter", "1", "--line-key", factory.line_key)
    result = sign_cli(factory, tmp_path / "app.bin", tmp_path / "no" / "out.bin", *common)
    assert result.exit_code == 2 and "directory does not exist" in result.output
    same = tmp_path / "out.bin"
    result = sign_cli(factory, tmp_path / "app.bin", same, "--detached", same, *common)
    assert result.exit_code == 2 and "another file" in result.output
    assert len(factory.steps("firmware.signed")) == before  # nothing recorded either
    assert list(tmp_path.iterdir()) == [tmp_path / "app.bin"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("softhsm2-util") is None, reason="softhsm2-util missing")
def test_hsm_backed_firmware_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: Keys
) -> None:
    module, conf = provision_softhsm_token(tmp_path / "softhsm", "iotid-fw", "so-1234", "pin-5678")
    unload_module(module)
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    try:
        store, _ = create_store(
            tmp_path / "store",
            2,
            3,
            hsm=f"pkcs11:token=iotid-fw;module={module}",
            hsm_pin="pin-5678",
        )
        for kind, alg in KINDS.items():
            store.generate(f"fw-{kind}", alg, tier=Tier.OPERATIONAL)
            signer = store.signer(f"fw-{kind}")
            image = tmp_path / f"{kind}.bin"
            image.write_bytes(sign_mcuboot(BODY, signer, version=VERSION, security_counter=7))
            pub = write_pub(signer.public_key(), tmp_path / f"{kind}.pub.pem")
            assert imgtool_verify(pub, image)[0], kind
            card = new_card([signer.public_key()])
            assert card_verify(card, image).valid, kind
            raw = sign_raw(BODY, signer, version=VERSION, security_counter=7)
            (tmp_path / "raw.bin").write_bytes(BODY)
            assert card_verify(card, tmp_path / "raw.bin", signature=raw).valid, kind
        store.lock()
    finally:
        unload_module(module)

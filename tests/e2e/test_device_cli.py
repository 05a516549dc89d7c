"""End to end: the ``iotid se`` / ``iotid device`` commands as a shell user runs them.

Every command runs as a subprocess of the venv's ``iotid`` console script on a card state
directory; the other side of each protocol is played here with independent tools: pycose and
``cryptography`` for the attestation quote and its chain, ``openssl req`` / ``openssl s_server``
for the CSR and mutual TLS, ``imgtool`` for MCUboot images, and the fleet's side of a key rotation
(proof check, acknowledgement signed with the development rotation-authority key).

Per identity algorithm (p256, p384, rsa2048; rsa3072 once, in a test marked slow) one card is
created, personalised with the development PKI and provisioned by the CLI (module fixture); each
test works on its own copy of that card directory in ``tmp_path``. The development PKI is made
once by the CLI (on a first card) and must be reused untouched by every later card.

Cases: personalisation (DEVELOPMENT warning, SECURED, five applets PERSONALIZED, GP test keys
refused, second run refused), provisioning (the factory's derivation for EC keys, second run
refused), attestation, CSR + client certificate (with an intermediate) + mTLS 1.3 / 1.2 against
s_server (and a wrong ``--ca`` failing closed), rotation (proof, ack, commit, forensic decryption
with the retired key, bad ack), per algorithm; firmware once (raw image + detached signature,
tampering, confirm, rollback, an imgtool image: the identity algorithm plays no part in it), CLI
errors (no card, bad hex), and rsa3072 once (slow: a fresh PKI, provision, attest).
Each CLI run costs ~0.6 s of interpreter start-up and imports, so cards are made once per
algorithm and copied.

Not covered: the PC/SC stack (test_pcsc_*.py), the library-level interop and negative matrices
(tests/integration, tests/unit).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from device_helpers import (
    IOTID,
    Cli,
    PrivateKey,
    PublicKey,
    TestCa,
    iotid,
    load_private,
    load_public_pem,
    master_key,
    s_server,
    snapshot,
    spki_der,
    write_pem,
)
from pycose.headers import X5chain
from pycose.keys.cosekey import CoseKey
from pycose.messages.sign1message import Sign1Message

from iotid.apdu import ApduError
from iotid.crypto.ecies import ecies_encrypt, rsa_hybrid_encrypt
from iotid.crypto.firmware_raw import sign_raw_image
from iotid.crypto.identity_kdf import derive_identity_key
from iotid.factory.devpki import DevelopmentOnlyWarning, DevPki
from iotid.host.attestation import decode_quote
from iotid.host.errors import HostError
from iotid.host.securitydomain import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.spec.algorithms import KeyAlg
from iotid.spec.firmware import HashAlg, ImageVersion, RawSignature
from iotid.spec.iso7816 import SW
from iotid.spec.rotation import ack_tbs, rotation_tbs
from iotid.transport.loopback import LoopbackConnection

pytestmark = pytest.mark.skipif(not IOTID.exists(), reason=f"no iotid console script at {IOTID}")

ALGS = ["p256", "p384", "rsa2048"]
KEY_ALGS = {
    "p256": KeyAlg.EC_P256,
    "p384": KeyAlg.EC_P384,
    "rsa2048": KeyAlg.RSA_2048,
    "rsa3072": KeyAlg.RSA_3072,
}
UIDS = {
    "first": bytes.fromhex("00112233445566778899"),
    "p256": bytes.fromhex("0A000000000000000256"),
    "p384": bytes.fromhex("0A000000000000000384"),
    "rsa2048": bytes.fromhex("0A000000000000002048"),
    "rsa3072": bytes.fromhex("0A000000000000003072"),
}
APPLETS = (
    "ProvisioningApplet",
    "AttestationApplet",
    "MtlsApplet",
    "FirmwareApplet",
    "RotationApplet",
)
GP_TEST_KVN = 0x30


# -- fixtures ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DevPkiRun:
    """The development PKI as the CLI made it on a first card (personalised, not provisioned)."""

    path: Path
    files: dict[str, bytes]
    first_card: Path
    perso: Cli


@dataclass(frozen=True)
class Device:
    """One card per algorithm, made by the CLI; tests copy ``personalised`` / ``provisioned``."""

    alg: str
    uid: bytes
    pki: Path
    personalised: Path
    provisioned: Path
    perso: Cli
    provision: Cli

    @property
    def identity(self) -> PublicKey:
        return load_public_pem(self.provision.out)

    def copy(self, tmp_path: Path, *, provisioned: bool = True) -> Path:
        card = tmp_path / "card"
        shutil.copytree(self.provisioned if provisioned else self.personalised, card)
        return card


def _ok(run: Cli) -> Cli:
    assert run.code == 0, run
    assert "Traceback" not in run.both, run
    return run


def _refused(run: Cli, code: int = 2) -> Cli:
    """A failure the CLI reports itself: the exit status, one ``error:`` line, no traceback."""
    assert run.code == code, run
    assert "Traceback" not in run.both, run
    return run


def _personalise(card: Path, pki: Path, alg: str, uid: bytes) -> Cli:
    _ok(iotid("se", "new", card, "--uid", uid.hex()))
    return iotid("se", "personalise", card, "--dev", "--dev-pki", pki, "--alg", alg)


@pytest.fixture(scope="module")
def dev_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPkiRun:
    base = tmp_path_factory.mktemp("dev-pki")
    pki, card = base / "pki", base / "first-card"
    perso = _ok(_personalise(card, pki, "p256", UIDS["first"]))
    return DevPkiRun(pki, snapshot(pki), card, perso)


@pytest.fixture(scope="module", params=ALGS)
def device(
    request: pytest.FixtureRequest, dev_pki: DevPkiRun, tmp_path_factory: pytest.TempPathFactory
) -> Device:
    alg: str = request.param
    base = tmp_path_factory.mktemp(f"device-{alg}")
    card = base / "provisioned"
    perso = _personalise(card, dev_pki.path, alg, UIDS[alg])
    shutil.copytree(card, base / "personalised")
    provision = iotid("device", "provision", "--se", card)
    return Device(alg, UIDS[alg], dev_pki.path, base / "personalised", card, perso, provision)


# -- 1. personalisation -----------------------------------------------------------------------
def _info_rows(out: str) -> dict[str, str]:
    """``se info``: applet name -> its table row."""
    return {name: line for line in out.splitlines() for name in APPLETS if name in line}


def test_personalise_dev_secures_the_card(
    device: Device, dev_pki: DevPkiRun, tmp_path: Path
) -> None:
    _ok(device.perso)
    assert "DEVELOPMENT PERSONALISATION" in device.perso.err  # loudly, on stderr
    assert "never ship" in device.perso.err
    assert "SECURED" in device.perso.out and device.uid.hex().upper() in device.perso.out
    # The development PKI the first card created is reused, not regenerated.
    assert snapshot(device.pki) == dev_pki.files
    assert {"root.pem", "master.key", "firmware.key", "rotation-authority.key"} <= set(
        dev_pki.files
    )

    card = device.copy(tmp_path, provisioned=False)
    info = _ok(iotid("se", "info", card))
    assert any(ln.split()[-1] == "SECURED" for ln in info.out.splitlines() if "life cycle" in ln)
    rows = _info_rows(info.out)
    assert set(rows) == set(APPLETS), info
    assert all("PERSONALIZED" in row for row in rows.values()), info
    assert "GP TEST KEYS" not in info.out

    # The GP test keys no longer open the ISD; the per-card development ISD keys do.
    emulated = Card.open(card)
    with pytest.raises(ApduError) as refused:
        SecurityDomainSession(LoopbackConnection(emulated)).authenticate(
            StaticKeys.gp_test_keys(), kvn=GP_TEST_KVN
        )
    assert refused.value.sw == SW.REFERENCED_DATA_NOT_FOUND  # 6A88: no key set 0x30
    with pytest.raises(HostError):  # whatever key set the card picks, the cryptogram fails
        SecurityDomainSession(LoopbackConnection(emulated)).authenticate(StaticKeys.gp_test_keys())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DevelopmentOnlyWarning)
        isd_keys = DevPki.load_or_create(device.pki).isd_keys(device.uid)
    SecurityDomainSession(LoopbackConnection(emulated)).authenticate(isd_keys)

    before = snapshot(card)
    again = _refused(
        iotid("se", "personalise", card, "--dev", "--dev-pki", device.pki, "--alg", device.alg)
    )
    assert "error" in again.both
    assert snapshot(card) == before
    assert snapshot(device.pki) == dev_pki.files


def test_second_personalise_says_already(dev_pki: DevPkiRun, tmp_path: Path) -> None:
    card = tmp_path / "card"
    shutil.copytree(dev_pki.first_card, card)
    again = _refused(iotid("se", "personalise", card, "--dev", "--dev-pki", dev_pki.path))
    assert "already" in again.both.lower(), again


# -- 2. provisioning --------------------------------------------------------------------------
def test_provision_matches_the_factory_derivation(device: Device, tmp_path: Path) -> None:
    _ok(device.provision)
    assert device.provision.out.startswith("-----BEGIN PUBLIC KEY-----")
    key = device.identity
    alg = KEY_ALGS[device.alg]
    if alg.is_ec:
        # The factory (manifest) side derives the same key from the batch master and the UID.
        expected = derive_identity_key(master_key(device.pki), device.uid, alg).public_key()
        assert spki_der(key) == spki_der(expected)
    else:
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == alg.size_bits

    card = device.copy(tmp_path)
    again = _refused(iotid("device", "provision", "--se", card))
    assert again.out == ""  # no second key printed
    assert "already provisioned" in again.err and len(again.err.strip().splitlines()) == 1


# -- 3. attestation ---------------------------------------------------------------------------
def _walk_to(chain: list[x509.Certificate], root: x509.Certificate) -> None:
    """Each certificate signed by the next, the last by ``root`` (signature + issuer name)."""
    if chain[-1] == root:
        chain = chain[:-1]
    for child, parent in zip(chain, [*chain[1:], root], strict=True):
        child.verify_directly_issued_by(parent)


def test_attest_quote_verifies_with_pycose_and_chains_to_root(
    device: Device, tmp_path: Path
) -> None:
    card = device.copy(tmp_path)
    nonce = os.urandom(32)
    quote_file = tmp_path / "q.cbor"
    _ok(iotid("device", "attest", "--se", card, "--nonce", nonce.hex(), "--out", quote_file))
    quote = quote_file.read_bytes()

    msg = Sign1Message.decode(quote)
    chain = [x509.load_der_x509_certificate(c) for c in msg.phdr[X5chain]]
    pem = (
        chain[0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    msg.key = CoseKey.from_pem_public_key(pem.decode())
    assert msg.verify_signature()
    root = x509.load_pem_x509_certificate((device.pki / "root.pem").read_bytes())
    _walk_to(chain, root)

    claims = decode_quote(quote)
    assert claims.nonce == nonce  # echoed
    assert claims.uid == device.uid
    assert spki_der(claims.identity_public_key) == spki_der(device.identity)
    assert claims.provisioned and claims.key_epoch == 1


# -- 4. CSR, certificate, mutual TLS ----------------------------------------------------------
def test_csr_certificate_and_mutual_tls(device: Device, tmp_path: Path) -> None:
    card = device.copy(tmp_path)
    csr_file = tmp_path / "csr.pem"
    _ok(iotid("device", "csr", "--se", card, "--out", csr_file))
    check = subprocess.run(
        ["openssl", "req", "-verify", "-noout", "-in", str(csr_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0 and "verify OK" in check.stdout + check.stderr, check
    csr = x509.load_pem_x509_csr(csr_file.read_bytes())
    assert spki_der(csr.public_key()) == spki_der(device.identity)  # type: ignore[arg-type]

    # Fleet CA -> intermediate -> the device; the server trusts the fleet CA only.
    fleet = TestCa.make("iotid test fleet CA")
    issuing = TestCa.sub(fleet, "iotid test issuing CA")
    rogue = TestCa.make("rogue CA")
    ca_pem = write_pem(tmp_path / "ca.pem", fleet.cert)
    rogue_pem = write_pem(tmp_path / "rogue.pem", rogue.cert)
    srv_pem, srv_key = fleet.server(tmp_path, "srv")
    cert_pem = write_pem(tmp_path / "cert.pem", issuing.client_for_csr(csr))
    chain_pem = write_pem(tmp_path / "chain.pem", issuing.cert)
    installed = _ok(iotid("device", "install-cert", "--se", card, cert_pem, "--chain", chain_pem))
    assert "2 certificate" in installed.out

    for version in ("1.3", "1.2"):
        with s_server(ca_pem, srv_pem, srv_key, version) as server:
            run = iotid(
                "device", "tls-connect", "--se", card, "--host", "127.0.0.1",
                "--port", str(server.port), "--ca", ca_pem,
                "--send", "hello from the SE\nCLOSE\n", "--tls", version,
            )  # fmt: skip
            log = server.output()
        _ok(run)
        assert f"TLS{version}" in run.err, run
        assert "ES eht morf olleh" in run.out, run  # s_server -rev read our line
        assert f"Protocol version: TLSv{version}" in log, log
        assert "Peer certificate: CN = " in log and "Verification: OK" in log, log
        assert "verify error" not in log, log

    # The server's chain does not lead to --ca: the device refuses it, nothing is sent.
    with s_server(ca_pem, srv_pem, srv_key, "1.3") as server:
        wrong = iotid(
            "device", "tls-connect", "--se", card, "--host", "127.0.0.1",
            "--port", str(server.port), "--ca", rogue_pem, "--send", "secret\nCLOSE\n",
        )  # fmt: skip
        log = server.output()
    _refused(wrong)
    assert wrong.out == "" and "server certificate rejected" in wrong.err, wrong
    # No application data went out. (In TLS 1.3 tlslite shows the server chain only once the
    # handshake is over, so s_server does see the client certificate: a documented caveat of
    # iotid.host.tls.)
    assert "terces" not in log and "secret" not in log, log


# -- 5. firmware ------------------------------------------------------------------------------
def _verdict(run: Cli) -> dict[str, Any]:
    assert "Traceback" not in run.both, run
    verdict: dict[str, Any] = json.loads(run.out)
    return verdict


def _raw_image(
    key: PrivateKey, directory: Path, name: str, data: bytes, counter: int
) -> tuple[Path, Path]:
    """``name.bin`` and its detached signature file ``name.sig`` (version 1.2.counter)."""
    version = ImageVersion(1, 2, counter)
    sig = sign_raw_image(key, data, version=version, security_counter=counter)
    image, signature = directory / f"{name}.bin", directory / f"{name}.sig"
    image.write_bytes(data)
    signature.write_bytes(RawSignature(HashAlg.SHA256, version, counter, sig).encode())
    return image, signature


def test_firmware_verify_confirm_rollback_and_imgtool(dev_pki: DevPkiRun, tmp_path: Path) -> None:
    """Once, not per identity algorithm: the firmware applet checks images against the issuance
    key (the development PKI's EC P-256 firmware key) and never uses the identity key."""
    card = tmp_path / "card"
    shutil.copytree(dev_pki.first_card, card)
    fw_key = dev_pki.path / "firmware.key"
    key = load_private(fw_key)
    work = tmp_path / "fw"
    work.mkdir()
    body = bytes(range(256)) * 64

    _, sig5 = _raw_image(key, work, "v5", body, 5)
    tampered = work / "v5-tampered.bin"
    tampered.write_bytes(body[:100] + bytes([body[100] ^ 1]) + body[101:])
    bad = iotid("device", "verify-firmware", "--se", card, tampered, "--signature", sig5)
    assert bad.code == 1, bad
    assert _verdict(bad)["valid"] is False

    good = iotid("device", "verify-firmware", "--se", card, work / "v5.bin", "--signature", sig5)
    assert good.code == 0, good
    verdict = _verdict(good)
    assert verdict["valid"] is True and verdict["security_counter"] == 5, good

    confirmed = _ok(iotid("device", "confirm-firmware", "--se", card))
    assert "anti-rollback floor: 5" in confirmed.out

    old, sig3 = _raw_image(key, work, "v3", body, 3)
    rolled = iotid("device", "verify-firmware", "--se", card, old, "--signature", sig3)
    assert rolled.code == 1, rolled
    assert _verdict(rolled)["reason"] == "rollback", rolled

    # An MCUboot image signed by imgtool with the development firmware key (EC P-256).
    src, image = work / "app.in", work / "app.img"
    src.write_bytes(body)
    signed = subprocess.run(
        [
            str(IOTID.with_name("imgtool")), "sign", "--key", str(fw_key),
            "--header-size", "0x200", "--align", "8", "--version", "1.3.0",
            "--slot-size", "0x800000", "--pad-header", "--security-counter", "6",
            str(src), str(image),
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    mcuboot = iotid("device", "verify-firmware", "--se", card, image)
    assert mcuboot.code == 0, mcuboot
    verdict = _verdict(mcuboot)
    assert verdict["valid"] is True and verdict["version"] == "1.3.0+0", mcuboot
    assert verdict["security_counter"] == 6


# -- 6. rotation ------------------------------------------------------------------------------
def _verify_proof(old: PublicKey, signature: bytes, message: bytes) -> None:
    """The signature rule of iotid.spec.rotation, with cryptography directly."""
    if isinstance(old, ec.EllipticCurvePublicKey):
        h: hashes.HashAlgorithm = (
            hashes.SHA384() if old.curve.name == "secp384r1" else hashes.SHA256()
        )
        old.verify(signature, message, ec.ECDSA(h))
    else:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        old.verify(signature, message, pss, hashes.SHA256())


def _status(card: Path) -> dict[str, Any]:
    run = _ok(iotid("device", "status", "--se", card))
    status: dict[str, Any] = json.loads(run.out)
    return status


def _rotate_and_commit(device: Device, card: Path, tmp_path: Path) -> None:
    """Encrypt to the current key, rotate, check the proof as the fleet, a bad ack, a good ack,
    then decrypt with the retired key."""
    old = device.identity
    secret = b"forensic record encrypted to the epoch-1 key"
    blob = tmp_path / "blob.bin"
    if isinstance(old, ec.EllipticCurvePublicKey):
        blob.write_bytes(ecies_encrypt(old, secret))
    else:
        blob.write_bytes(rsa_hybrid_encrypt(old, secret))

    nonce = os.urandom(32)
    rotated = _ok(iotid("device", "rotate", "--se", card, "--nonce", nonce.hex()))
    proof = json.loads(rotated.out)
    assert proof["epoch"] == 2 and bytes.fromhex(proof["nonce"]) == nonce
    new_spki = spki_der(load_public_pem(proof["public_key_pem"]))
    assert new_spki != spki_der(old)
    _verify_proof(
        old, bytes.fromhex(proof["signature"]), rotation_tbs(device.uid, 2, new_spki, nonce)
    )
    authority = load_private(device.pki / "rotation-authority.key")
    assert isinstance(authority, ec.EllipticCurvePrivateKey)

    # An acknowledgement for another nonce: refused, and the card state is byte for byte the
    # same (so is its status: epoch 1, rotation pending).
    before = snapshot(card)
    wrong_ack = authority.sign(
        ack_tbs(device.uid, 2, new_spki, os.urandom(32)), ec.ECDSA(hashes.SHA256())
    )
    refused = _refused(iotid("device", "commit", "--se", card, "--ack", wrong_ack.hex()))
    assert refused.err.startswith("error:"), refused
    assert snapshot(card) == before

    ack = authority.sign(ack_tbs(device.uid, 2, new_spki, nonce), ec.ECDSA(hashes.SHA256()))
    committed = _ok(iotid("device", "commit", "--se", card, "--ack", ack.hex()))
    assert "epoch 2" in committed.out
    status = _status(card)
    assert status["epoch"] == 2 and status["retired_epochs"] == [1], status
    assert status["pending_rotation"] is False

    plain = tmp_path / "plain.bin"
    _ok(iotid("device", "decrypt", "--se", card, "--epoch", "1", blob, "--out", plain))
    assert plain.read_bytes() == secret


def test_rotate_commit_and_decrypt_with_retired_key(device: Device, tmp_path: Path) -> None:
    _rotate_and_commit(device, device.copy(tmp_path), tmp_path)


# -- 7. errors --------------------------------------------------------------------------------
def test_cli_errors_are_one_line_without_traceback(dev_pki: DevPkiRun, tmp_path: Path) -> None:
    junk = tmp_path / "not-a-card"
    junk.mkdir()
    (junk / "notes.txt").write_text("no card here\n")
    for args in (
        ("device", "status", "--se", junk),
        ("device", "provision", "--se", tmp_path / "missing"),
        ("se", "info", junk),
    ):
        run = _refused(iotid(*args))
        lines = run.both.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), run

    card = tmp_path / "card"
    shutil.copytree(dev_pki.first_card, card)
    out = tmp_path / "q.cbor"
    run = _refused(iotid("device", "attest", "--se", card, "--nonce", "not-hex!", "--out", out))
    assert "hex" in run.err and not out.exists(), run


# -- rsa3072: the whole path once, with a PKI the CLI creates ----------------------------------
@pytest.mark.slow
def test_rsa3072_device_end_to_end(tmp_path: Path) -> None:
    pki, card = tmp_path / "pki", tmp_path / "personalised"
    perso = _ok(_personalise(card, pki, "rsa3072", UIDS["rsa3072"]))
    assert "DEVELOPMENT" in perso.err and (pki / "root.pem").exists()
    provision = _ok(iotid("device", "provision", "--se", card))
    key = load_public_pem(provision.out)
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 3072

    quote_file = tmp_path / "q.cbor"
    nonce = os.urandom(16)
    _ok(iotid("device", "attest", "--se", card, "--nonce", nonce.hex(), "--out", quote_file))
    msg = Sign1Message.decode(quote_file.read_bytes())
    chain = [x509.load_der_x509_certificate(c) for c in msg.phdr[X5chain]]
    leaf_pem = (
        chain[0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    msg.key = CoseKey.from_pem_public_key(leaf_pem.decode())
    assert msg.verify_signature()
    _walk_to(chain, x509.load_pem_x509_certificate((pki / "root.pem").read_bytes()))
    assert decode_quote(quote_file.read_bytes()).nonce == nonce

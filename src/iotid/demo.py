"""``iotid demo``: the end-to-end walk through what iotid has built so far.

Scope today: the secure element and the device side of the lifecycle. A fresh emulated card;
SCP03 at every security level; personalisation over SCP03 with a development PKI (applets, the
attestation key certified on the card, new ISD keys, SECURED; the GP test keys refused);
first-boot provisioning (the identity key equals the factory's derivation); an attestation quote
checked down to the root; a CSR signed inside the card; mutual TLS 1.3 with the key in the SE;
a signed firmware update accepted, a tampered one refused, the rollback floor raised; a key
rotation acknowledged by the fleet's authority, data for the old key still decryptable; a
restart from NVM. The factory ceremony and the fleet platform are not built yet: the
development PKI and small stand-ins in this module play their part, and the report says so.
Secret keys are never printed.
Not in scope: printing (the CLI renders the report), argument parsing.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iotid.apdu import ApduError
from iotid.connect import open_connection
from iotid.crypto import cose
from iotid.crypto.ecies import ecies_encrypt
from iotid.crypto.firmware_raw import sign_raw_image
from iotid.crypto.identity_kdf import derive_identity_key
from iotid.factory.devpki import DevelopmentOnlyWarning, DevPki, issue_certificate
from iotid.host import SecurityDomainSession
from iotid.host.attestation import decode_quote
from iotid.host.personalisation import PersonalisationPlan, personalise
from iotid.host.secureelement import SecureElement
from iotid.host.tls import connect
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.spec.algorithms import KeyAlg
from iotid.spec.firmware import HashAlg, ImageVersion, RawSignature
from iotid.spec.gp import TEST_KEY_VERSION, VALID_SECURITY_LEVELS, CardLifeCycle
from iotid.spec.rotation import ack_tbs
from iotid.transport.loopback import LoopbackConnection

NOT_YET_BUILT = (
    "factory key ceremony with an M-of-N quorum and HSM keys (a development PKI stands in)",
    "fleet platform: attestation verifier, registry, issuing CA, gateway, revocation, audit "
    "(small in-process stand-ins play the fleet's part)",
)

#: Steps ``run_demo`` reports (for progress bars).
TOTAL_STEPS = 12


@dataclass
class Step:
    name: str
    ok: bool
    detail: str


@dataclass
class DemoReport:
    uid: str = ""
    steps: list[Step] = field(default_factory=list)
    apdus_per_second: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)


def run_demo(state_dir: Path, on_step: Callable[[Step], None] = lambda s: None) -> DemoReport:
    """Run every step; a failing step is recorded and ends the run."""
    report = DemoReport()

    def record(name: str, ok: bool, detail: str) -> None:
        step = Step(name, ok, detail)
        report.steps.append(step)
        on_step(step)
        if not ok:
            raise _StepFailedError(name)

    try:
        _run(state_dir, report, record)
    except _StepFailedError:
        pass
    except Exception as exc:  # a demo reports any failure as a failed step
        report.steps.append(Step("unexpected error", False, f"{type(exc).__name__}: {exc}"))
        on_step(report.steps[-1])
    return report


class _StepFailedError(Exception):
    pass


def _run(state_dir: Path, report: DemoReport, record: Callable[[str, bool, str], None]) -> None:
    card_dir = state_dir / "card"
    card = Card.create(card_dir)
    report.uid = card.uid.hex().upper()
    record("create card", True, f"UID {report.uid}, GP test keys (KVN 0x30), OP_READY, 5 applets")

    opened = 0
    for level in sorted(VALID_SECURITY_LEVELS - {0x00}):
        for extended in (False, True):
            s = SecurityDomainSession(LoopbackConnection(card), extended=extended)
            s.authenticate(StaticKeys.gp_test_keys(), level=level)
            opened += len(s.get_key_information()) == 3
    record("SCP03 sessions", opened == 10, "levels 01/03/11/13/33, short and extended APDUs")

    pki, isd_kvn = _personalise(card, state_dir, record)
    _device_lifecycle(card, pki, isd_kvn, state_dir, card_dir, report, record)


Record = Callable[[str, bool, str], None]


def _personalise(card: Card, state_dir: Path, record: Record) -> tuple[DevPki, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DevelopmentOnlyWarning)
        pki = DevPki.load_or_create(state_dir / "dev-pki")
    plan = PersonalisationPlan(
        alg=KeyAlg.EC_P256,
        master_key=pki.master_key,
        operator_rekey_key=pki.operator_key.public_key(),
        certify=lambda public, uid: (pki.certify_attestation_key(public, uid), pki.batch_cert),
        firmware_keys=(pki.firmware_key.public_key(),),
        rotation_authority=pki.rotation_key.public_key(),
    )
    result = personalise(LoopbackConnection(card), plan, isd_keys_for=pki.isd_keys)
    record(
        "personalise over SCP03 (DEVELOPMENT PKI)",
        card.card_life_cycle == CardLifeCycle.SECURED,
        "applets personalised, attestation key certified on the card, new ISD keys, SECURED",
    )
    try:
        SecurityDomainSession(LoopbackConnection(card)).authenticate(
            StaticKeys.gp_test_keys(), kvn=TEST_KEY_VERSION
        )
        record("GP test keys refused", False, "the test keys still opened a session")
    except ApduError as exc:
        record("GP test keys refused", True, f"INITIALIZE UPDATE KVN 0x30 -> {exc}")
    return pki, result.isd_kvn


def _device_lifecycle(
    card: Card,
    pki: DevPki,
    isd_kvn: int,
    state_dir: Path,
    card_dir: Path,
    report: DemoReport,
    record: Record,
) -> None:
    se = SecureElement(LoopbackConnection(card))
    identity = se.provisioning.provision()
    expected = derive_identity_key(pki.master_key, card.uid, KeyAlg.EC_P256).public_key()
    record(
        "first boot: PROVISION",
        _spki(identity) == _spki(expected),
        "identity key derived in the SE equals the factory's KDF(master, UID, identity-v1)",
    )

    nonce = secrets.token_bytes(16)
    quote_bytes = se.attestation.attest(nonce)
    quote = decode_quote(quote_bytes)
    leaf, batch = quote.certificates[0], quote.certificates[1]
    chain_ok = _issued_by(leaf, batch) and _issued_by(batch, pki.root_cert)
    signed = cose.verify_sign1(quote.message, leaf.public_key())  # type: ignore[arg-type]
    record(
        "attestation quote",
        signed
        and chain_ok
        and quote.nonce == nonce
        and _spki(quote.identity_public_key) == _spki(identity),
        f"EAT/COSE_Sign1 {len(quote_bytes)} bytes, nonce echoed, chain to the root, "
        "cnf = identity key",
    )

    csr = se.mtls.create_csr()
    client_cert = issue_certificate(pki, csr.public_key(), csr.subject, client=True)  # type: ignore[arg-type]
    se.mtls.install_chain([client_cert])
    record(
        "CSR signed in the SE",
        csr.is_signature_valid,
        "client certificate issued (stand-in CA) and installed",
    )

    answer = _mtls_round_trip(se, pki, state_dir)
    record(
        "mutual TLS 1.3, key in the SE",
        answer == b"hello from the fleet",
        f"server answered {answer!r}",
    )

    image = secrets.token_bytes(64 * 1024)
    sig = sign_raw_image(pki.firmware_key, image, version=ImageVersion(1, 1, 0), security_counter=2)
    sig_file = RawSignature(HashAlg.SHA256, ImageVersion(1, 1, 0), 2, sig).encode()
    (state_dir / "fw.bin").write_bytes(image)
    good = se.verify_firmware(state_dir / "fw.bin", signature=sig_file)
    floor = se.firmware.confirm() if good.valid else -1  # the bootloader booted it: confirm
    (state_dir / "fw-tampered.bin").write_bytes(image[:-1] + bytes([image[-1] ^ 1]))
    bad = se.verify_firmware(state_dir / "fw-tampered.bin", signature=sig_file)
    verified = good.valid and not bad.valid
    record(
        "signed firmware",
        verified and floor == 2,
        f"valid image accepted, tampered refused ({bad.reason}), rollback floor now {floor}",
    )

    secret_for_old_key = ecies_encrypt(identity, b"telemetry sealed to epoch 1")  # type: ignore[arg-type]
    fleet_nonce = secrets.token_bytes(16)
    proof = se.rotation.rotate(fleet_nonce)
    proof.verify(identity, card.uid)
    ack = pki.rotation_key.sign(
        ack_tbs(card.uid, proof.epoch, proof.public_key_der, fleet_nonce), ec.ECDSA(hashes.SHA256())
    )
    epoch = se.rotation.commit(ack)
    recovered = se.rotation.decrypt(1, secret_for_old_key)
    record(
        "key rotation",
        epoch == 2 and recovered == b"telemetry sealed to epoch 1",
        "proof of continuity verified, authority ack committed, epoch 2; old key decrypt-only",
    )

    reopened = SecureElement(open_connection(card_dir))
    state = reopened.provisioning.state()
    isd = reopened.isd
    isd.authenticate(pki.isd_keys(card.uid), kvn=isd_kvn)
    record(
        "restart from NVM",
        state.epoch == 2 and state.provisioned,
        "state reloaded; per-card ISD keys open 0x33",
    )

    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.3:
        isd.get_data(0x9F7F)
        count += 1
    report.apdus_per_second = count / (time.perf_counter() - start)
    record("throughput", True, f"{report.apdus_per_second:,.0f} wrapped APDUs/s at level 0x33")


def _spki(key: object) -> bytes:
    assert hasattr(key, "public_bytes")  # noqa: S101 - public keys only
    out: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return out


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError):
        return False
    return True


def _mtls_round_trip(se: SecureElement, pki: DevPki, workdir: Path) -> bytes:
    """A local TLS server (stdlib ssl, CERT_REQUIRED) stands in for the fleet gateway."""
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = issue_certificate(pki, server_key.public_key(), None, client=False)
    (workdir / "gw.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    (workdir / "gw.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (workdir / "root.pem").write_bytes(pki.root_cert.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(workdir / "gw.pem", workdir / "gw.key")
    ctx.load_verify_locations(workdir / "root.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(64)
            tls.sendall(b"hello from the fleet")
            with contextlib.suppress(OSError, ssl.SSLError):
                tls.unwrap()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    credential = se.credential()
    if credential is None:
        return b"no credential"
    client = connect(
        "127.0.0.1",
        port,
        credential.signer,
        credential.chain,
        [pki.root_cert],
        versions=("TLS1.3",),
    )
    try:
        client.sendall(b"hello")
        answer = client.recv(64)
    finally:
        client.close()
    thread.join(5)
    return answer

"""``iotid demo``: the end-to-end walk through what iotid has built so far.

Scope today: the factory and the device side of the lifecycle. A fresh emulated card and SCP03
at every security level; the key ceremony with a 2-of-3 quorum (hash-chained record tied to the
issuance root); a batch (attestation CA, master keys) created with the quorum present; the
personalisation line over SCP03 (applets, attestation key certified on the card, per-card ISD
keys, SECURED, a signed manifest; the GP test keys refused); first-boot provisioning (the
identity key equals the manifest's derivation); an attestation quote checked down to the
ceremony's root; a CSR signed inside the card; mutual TLS 1.3 with the key in the SE; a
factory-signed firmware update accepted, a tampered one refused, the rollback floor raised; a
key rotation acknowledged by the rotation authority, data for the old key still decryptable; a
restart from NVM. The quote is checked by the fleet's verifier; the rest of the fleet is not
built yet: small stand-ins in this module play its part (an issuing CA, a TLS server), and the
report says so.
Secret keys are never printed.
Not in scope: printing (the CLI renders the report), argument parsing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from iotid.apdu import ApduError
from iotid.connect import open_connection
from iotid.crypto.ecies import ecies_encrypt
from iotid.crypto.identity_kdf import derive_identity_key
from iotid.factory.batch import FIRMWARE_KEY, ROTATION_AUTHORITY_KEY, create_batch
from iotid.factory.ceremony import init_ceremony, open_store
from iotid.factory.ceremony_verify import verify_ceremony
from iotid.factory.devpki import ca_certificate, issue_certificate
from iotid.factory.diversify import diversify_isd_keys
from iotid.factory.firmware import sign_raw
from iotid.factory.line import personalise_batch, read_line_key
from iotid.factory.stores import ManagedKeyStore
from iotid.fleet.enrollment import InMemoryNonceStore, QuoteVerifier, Reason
from iotid.host import SecurityDomainSession
from iotid.host.secureelement import SecureElement
from iotid.host.tls import connect
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.spec.algorithms import KeyAlg
from iotid.spec.firmware import ImageVersion
from iotid.spec.gp import TEST_KEY_VERSION, VALID_SECURITY_LEVELS, CardLifeCycle
from iotid.spec.manifest import Manifest, verify_manifest
from iotid.spec.rotation import ack_tbs
from iotid.transport.loopback import LoopbackConnection

NOT_YET_BUILT = (
    "the demo over the running fleet (issue 6): the fleet service (`iotid fleet serve`: API, "
    "gateway, rotation, revocation, OCSP/CRL, audit trace) is built, but this walk-through "
    "still checks the quote with the fleet's verifier in-process and plays the rest with "
    "small stand-ins",
)

#: Steps ``run_demo`` reports (for progress bars).
TOTAL_STEPS = 14


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
    card = Card.create(state_dir / "fresh-card")
    record(
        "a fresh card",
        True,
        f"UID {card.uid.hex().upper()}, GP test keys (KVN 0x30), OP_READY, 5 applets",
    )

    opened = 0
    for level in sorted(VALID_SECURITY_LEVELS - {0x00}):
        for extended in (False, True):
            s = SecurityDomainSession(LoopbackConnection(card), extended=extended)
            s.authenticate(StaticKeys.gp_test_keys(), level=level)
            opened += len(s.get_key_information()) == 3
    record("SCP03 sessions", opened == 10, "levels 01/03/11/13/33, short and extended APDUs")

    factory = _factory(state_dir, record)
    _device_lifecycle(factory, state_dir, report, record)


Record = Callable[[str, bool, str], None]
#: The ISD key version the personalisation routine gives every card.
PER_CARD_ISD_KVN = 0x31


@dataclass(frozen=True)
class StandInCa:
    """The fleet's issuing CA does not exist yet: a throwaway in-process CA plays its part."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls) -> StandInCa:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, ca_certificate("fleet stand-in CA (demo)", key, key, None, 0))

    def issue(
        self, public_key: ec.EllipticCurvePublicKey, subject: x509.Name | None, *, client: bool
    ) -> x509.Certificate:
        return issue_certificate(self.key, self.cert, public_key, subject, client=client)


@dataclass
class Factory:
    """What the device phase needs from the factory run."""

    directory: Path
    card_dir: Path
    uid: bytes
    store: ManagedKeyStore
    root: x509.Certificate
    master_key: bytes
    isd_keys: StaticKeys
    manifest: Manifest


def _factory(state_dir: Path, record: Record) -> Factory:
    directory = state_dir / "factory"
    ceremony = init_ceremony(directory, 2, 3, ["alice", "bob", "carol"])
    verify_ceremony(directory)
    record(
        "key ceremony (2-of-3 quorum)",
        True,
        f"issuance root {ceremony.root_fingerprint[:16]}, record tied to the root, 3 share files",
    )
    shares = [f.path for f in ceremony.share_files[:2]]
    info = create_batch(directory, "demo", KeyAlg.EC_P256, shares)
    record(
        "batch", True, f"attestation CA under the root (quorum present), master keys; {info.name}"
    )
    out = state_dir / "line"
    result = personalise_batch(directory, "demo", 1, out)
    manifest = verify_manifest(
        result.manifest_path.read_bytes(),
        result.signature_path.read_bytes(),
        ceremony.root_certificate,
    )
    card_dir = out / "cards" / "000000"
    card = Card.open(card_dir)
    store = open_store(directory)
    store.unlock_operational(read_line_key(info.line_key_path))
    record(
        "personalisation line over SCP03",
        card.card_life_cycle == CardLifeCycle.SECURED and len(manifest.cards) == 1,
        "applets personalised, attestation key certified on the card, per-card ISD keys, "
        "SECURED; signed manifest verified against the root",
    )
    try:
        SecurityDomainSession(LoopbackConnection(card)).authenticate(
            StaticKeys.gp_test_keys(), kvn=TEST_KEY_VERSION
        )
        record("GP test keys refused", False, "the test keys still opened a session")
    except ApduError as exc:
        record("GP test keys refused", True, f"INITIALIZE UPDATE KVN 0x30 -> {exc}")
    master = store.secret(info.keys["master"])
    isd = diversify_isd_keys(store.secret(info.keys["isd_master"]), card.uid)
    return Factory(
        directory, card_dir, card.uid, store, ceremony.root_certificate, master, isd, manifest
    )


def _device_lifecycle(
    factory: Factory, state_dir: Path, report: DemoReport, record: Record
) -> None:
    report.uid = factory.uid.hex().upper()
    se = SecureElement(open_connection(factory.card_dir))
    identity = se.provisioning.provision()
    expected = derive_identity_key(factory.master_key, factory.uid, KeyAlg.EC_P256).public_key()
    record(
        "first boot: PROVISION",
        _spki(identity) == _spki(expected),
        "identity key derived in the SE equals the manifest's KDF(master, UID, identity-v1)",
    )

    nonces = InMemoryNonceStore()
    verifier = QuoteVerifier(
        factory.root, factory.manifest.card, lambda _cert: False, nonces, _utcnow
    )
    nonce = nonces.issue(factory.uid.hex())
    quote_bytes = se.attestation.attest(nonce)
    verdict = verifier.verify(quote_bytes, nonce)
    replay = verifier.verify(quote_bytes, nonce)
    record(
        "attestation quote (fleet verifier)",
        verdict.ok
        and verdict.identity_public_key is not None
        and _spki(verdict.identity_public_key) == _spki(identity)
        and replay.reason is Reason.NONCE_REUSED,
        f"EAT/COSE_Sign1 {len(quote_bytes)} bytes: chain to the ceremony's root, manifest and "
        f"identity key match; the replayed quote is refused ({replay.reason.value})",
    )

    fleet_ca = StandInCa.create()
    csr = se.mtls.create_csr()
    client_cert = fleet_ca.issue(csr.public_key(), csr.subject, client=True)  # type: ignore[arg-type]
    se.mtls.install_chain([client_cert])
    record(
        "CSR signed in the SE",
        csr.is_signature_valid,
        "client certificate issued by a stand-in fleet CA and installed",
    )

    answer = _mtls_round_trip(se, fleet_ca, state_dir)
    record(
        "mutual TLS 1.3, key in the SE",
        answer == b"hello from the fleet",
        f"server answered {answer!r}",
    )

    firmware_signer = factory.store.signer(FIRMWARE_KEY)
    image = secrets.token_bytes(64 * 1024)
    version = ImageVersion(1, 1, 0)
    sig_file = sign_raw(image, firmware_signer, version=version, security_counter=2)
    (state_dir / "fw.bin").write_bytes(image)
    good = se.verify_firmware(state_dir / "fw.bin", signature=sig_file)
    floor = se.firmware.confirm() if good.valid else -1  # the bootloader booted it: confirm
    (state_dir / "fw-tampered.bin").write_bytes(image[:-1] + bytes([image[-1] ^ 1]))
    bad = se.verify_firmware(state_dir / "fw-tampered.bin", signature=sig_file)
    record(
        "signed firmware",
        good.valid and not bad.valid and floor == 2,
        f"factory-signed image accepted, tampered refused ({bad.reason}), "
        f"rollback floor now {floor}",
    )

    sealed = ecies_encrypt(identity, b"telemetry sealed to epoch 1")  # type: ignore[arg-type]
    fleet_nonce = secrets.token_bytes(16)
    proof = se.rotation.rotate(fleet_nonce)
    proof.verify(identity, factory.uid)
    authority = factory.store.signer(ROTATION_AUTHORITY_KEY)
    ack = authority.sign(ack_tbs(factory.uid, proof.epoch, proof.public_key_der, fleet_nonce))
    epoch = se.rotation.commit(ack)
    recovered = se.rotation.decrypt(1, sealed)
    record(
        "key rotation",
        epoch == 2 and recovered == b"telemetry sealed to epoch 1",
        "proof of continuity verified, authority ack committed, epoch 2; old key decrypt-only",
    )

    reopened = SecureElement(open_connection(factory.card_dir))
    state = reopened.provisioning.state()
    isd = reopened.isd
    isd.authenticate(factory.isd_keys, kvn=PER_CARD_ISD_KVN)
    record(
        "restart from NVM",
        state.epoch == 2 and state.provisioned,
        "state reloaded; the per-card ISD keys open level 0x33",
    )

    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.3:
        isd.get_data(0x9F7F)
        count += 1
    report.apdus_per_second = count / (time.perf_counter() - start)
    record("throughput", True, f"{report.apdus_per_second:,.0f} wrapped APDUs/s at level 0x33")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _spki(key: object) -> bytes:
    assert hasattr(key, "public_bytes")  # noqa: S101 - public keys only
    out: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return out


def _mtls_round_trip(se: SecureElement, ca: StandInCa, workdir: Path) -> bytes:
    """A local TLS server (stdlib ssl, CERT_REQUIRED) stands in for the fleet gateway."""
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = ca.issue(server_key.public_key(), None, client=False)
    (workdir / "gw.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    (workdir / "gw.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (workdir / "fleet-ca.pem").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(workdir / "gw.pem", workdir / "gw.key")
    ctx.load_verify_locations(workdir / "fleet-ca.pem")
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
        [ca.cert],
        versions=("TLS1.3",),
    )
    try:
        client.sendall(b"hello")
        answer = client.recv(64)
    finally:
        client.close()
    thread.join(5)
    return answer

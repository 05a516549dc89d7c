"""Factory batches and the personalisation line, end to end with the real ceremony (2-of-3,
software key store): quorum for batch creation, personalised cards (SECURED, GP test keys gone,
attestation chain to the root, PROVISION = manifest), the signed manifest, resumability after
tearing at every stage and after a real SIGKILL, and the refusals (M-1 shares, tampered
manifest, an already SECURED card)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from iotid.apdu import ApduError
from iotid.cli.factory_batch import batch_app, personalise
from iotid.crypto import cose
from iotid.factory import ceremony, line
from iotid.factory.batch import BatchError, create_batch, load_batch
from iotid.factory.ceremony import CeremonyResult, init_ceremony
from iotid.factory.ceremony_verify import verify_ceremony
from iotid.factory.diversify import diversify_isd_keys
from iotid.factory.keystore import KeyStoreError, Tier
from iotid.factory.line import LineError, personalise_batch, read_line_key
from iotid.host.attestation import decode_quote
from iotid.host.personalisation import (
    AlreadyPersonalisedError,
    PersonalisationPlan,
)
from iotid.host.personalisation import (
    personalise as run_routine,
)
from iotid.host.secureelement import SecureElement
from iotid.host.securitydomain import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se.card import Card
from iotid.spec import gp
from iotid.spec.algorithms import KeyAlg
from iotid.spec.iso7816 import SW
from iotid.spec.manifest import Manifest, ManifestError, certificate_sha256, verify_manifest
from iotid.transport.loopback import LoopbackConnection

CHILD = Path(__file__).with_name("line_child.py")
DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def _spki(key: Any) -> bytes:
    out: bytes = key.public_bytes(DER, SPKI)
    return out


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("factory")


@pytest.fixture(scope="module")
def cer(work: Path) -> CeremonyResult:
    return init_ceremony(work / "ceremony", 2, 3, ["alice", "bob", "carol"], operator="op")


@pytest.fixture(scope="module")
def cdir(cer: CeremonyResult) -> Path:
    return cer.directory


@pytest.fixture(scope="module")
def shares(cer: CeremonyResult) -> list[Path]:
    return [s.path for s in cer.share_files]


@pytest.fixture(scope="module")
def p256(cdir: Path, shares: list[Path]) -> str:
    create_batch(cdir, "p256-a", "p256", shares[:2])
    return "p256-a"


@pytest.fixture(scope="module")
def main_line(cdir: Path, p256: str, work: Path) -> line.LineResult:
    seen: list[tuple[int, int]] = []
    result = personalise_batch(
        cdir,
        p256,
        5,
        work / "out-main",
        rollback_floor=3,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    return result


@pytest.fixture(scope="module")
def isd_master(cdir: Path, p256: str) -> bytes:
    info = load_batch(cdir, p256)
    store = ceremony.open_store(cdir)
    store.unlock_operational(read_line_key(info.line_key_path))
    return store.secret(info.keys["isd_master"])


def _journal(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "line.jsonl").read_text().splitlines()]


def _check_batch(out: Path, count: int, root: x509.Certificate, isd_master: bytes) -> Manifest:
    """What every finished line must show: no duplicates, no gaps, every card consistent."""
    m = verify_manifest(
        (out / "manifest.json").read_bytes(), (out / "manifest.sig").read_bytes(), root
    )
    journal = _journal(out)
    assert sorted(e["index"] for e in journal) == list(range(count))
    assert len(m.cards) == count
    assert len({c.uid for c in m.cards}) == count
    assert sorted(p.name for p in (out / "cards").iterdir()) == [f"{i:06d}" for i in range(count)]
    assert not (out / "pending").exists()
    by_index = {e["index"]: e for e in journal}
    for i, entry in enumerate(m.cards):
        card = Card.open(out / "cards" / f"{i:06d}")
        assert card.uid == entry.uid
        assert by_index[i]["uid"] == entry.uid.hex().upper()
        assert by_index[i]["attestation_cert_sha256"] == entry.attestation_cert_sha256
        assert card.card_life_cycle == gp.CardLifeCycle.SECURED
        sd = SecurityDomainSession(LoopbackConnection(card))
        sd.authenticate(diversify_isd_keys(isd_master, card.uid), kvn=0x31)
        assert sd.get_cplc().uid == card.uid
    return m


# -- batches ------------------------------------------------------------------------------------
def test_batch_create_needs_the_quorum(cdir: Path, shares: list[Path]) -> None:
    before = ceremony.open_record(cdir).entries
    with pytest.raises(KeyStoreError, match=r"(?i)share"):
        create_batch(cdir, "q-1", "p384", shares[:1])
    assert not (cdir / "batches" / "q-1").exists()
    assert ceremony.open_record(cdir).entries == before  # nothing half-done
    listed = ceremony.open_store(cdir).keys()
    assert not [k for k in listed if k.name.startswith("batch/q-1/")]

    info = create_batch(cdir, "q-1", "p384", [shares[2], shares[0]])
    root = ceremony.root_certificate(cdir)
    ca = info.ca_certificate
    ca.verify_directly_issued_by(root)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    aki = ca.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == x509.SubjectKeyIdentifier.from_public_key(root.public_key()).digest
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 365 * 20
    assert (info.line_key_path.stat().st_mode & 0o777) == 0o600
    assert load_batch(cdir, "q-1") == info
    listed = ceremony.open_store(cdir).keys()
    keys = {k.name: k for k in listed}
    assert keys["batch/q-1/ca"].alg is KeyAlg.EC_P384
    assert keys["batch/q-1/master"].secret and keys["batch/q-1/isd-master"].secret
    assert keys["operator-rekey"].tier is Tier.QUORUM
    assert keys["firmware"].tier is Tier.OPERATIONAL
    assert keys["fleet-rotation-authority"].tier is Tier.OPERATIONAL
    step = ceremony.open_record(cdir).head
    assert step.action == "batch.created" and list(step.actors) == ["carol", "alice"]
    assert step.details["batch_ca_sha256"] == certificate_sha256(ca)
    assert verify_ceremony(cdir).later_steps >= 1


def test_batch_create_refusals(cdir: Path, shares: list[Path], p256: str, work: Path) -> None:
    with pytest.raises(BatchError, match="exists already"):
        create_batch(cdir, p256, "p256", shares[:2])
    with pytest.raises(BatchError, match="unknown algorithm"):
        create_batch(cdir, "x", "ed25519", shares[:2])
    with pytest.raises(BatchError, match="batch name"):
        create_batch(cdir, "../x", "p256", shares[:2])
    other = init_ceremony(work / "other", 2, 2)
    with pytest.raises(KeyStoreError):
        create_batch(cdir, "foreign", "p256", [shares[0], other.share_files[0].path])
    assert not (cdir / "batches" / "foreign").exists()


# -- the line -------------------------------------------------------------------------------------
def test_every_card_secured_and_test_keys_refused(
    main_line: line.LineResult, cdir: Path, isd_master: bytes, work: Path
) -> None:
    assert (main_line.personalised, main_line.skipped, main_line.scrapped) == (5, 0, 0)
    m = _check_batch(work / "out-main", 5, ceremony.root_certificate(cdir), isd_master)
    assert m.cards == main_line.cards
    for i in range(5):
        card = Card.open(work / "out-main" / "cards" / f"{i:06d}")
        assert not any(test for _, _, test in card.info().key_sets)
        with pytest.raises(ApduError) as err:
            SecurityDomainSession(LoopbackConnection(card)).authenticate(
                StaticKeys.gp_test_keys(), kvn=gp.TEST_KEY_VERSION
            )
        assert err.value.sw == SW.REFERENCED_DATA_NOT_FOUND  # 6A88: the test key set is gone


def test_attestation_chain_and_provision_match_manifest(
    main_line: line.LineResult, cdir: Path, work: Path
) -> None:
    out = work / "out-main"
    root = ceremony.root_certificate(cdir)
    m = verify_manifest(
        (out / "manifest.json").read_bytes(), (out / "manifest.sig").read_bytes(), root
    )
    assert m.batch == "p256-a" and m.algorithm is KeyAlg.EC_P256
    for i, entry in enumerate(m.cards):
        se = SecureElement(LoopbackConnection(Card.open(out / "cards" / f"{i:06d}")))
        identity = se.provisioning.provision()
        assert entry.identity_public_key is not None
        assert _spki(identity) == _spki(entry.identity_public_key)
        nonce = secrets.token_bytes(16)
        quote = decode_quote(se.attestation.attest(nonce))
        leaf, batch_ca = quote.certificates
        assert cose.verify_sign1(quote.message, leaf.public_key())  # type: ignore[arg-type]
        leaf.verify_directly_issued_by(batch_ca)
        batch_ca.verify_directly_issued_by(root)
        assert batch_ca == m.batch_ca
        assert certificate_sha256(leaf) == entry.attestation_cert_sha256
        serial = leaf.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value
        assert quote.uid == entry.uid and serial == entry.uid.hex().upper()
        assert quote.nonce == nonce and _spki(quote.identity_public_key) == _spki(identity)
        assert quote.firmware_floor == 3  # the rollback floor the line burned


def test_tampered_manifest_refused(main_line: line.LineResult, cdir: Path) -> None:
    root = ceremony.root_certificate(cdir)
    data = main_line.manifest_path.read_bytes()
    sig = main_line.signature_path.read_bytes()
    for pos in (len(data) // 3, len(data) // 2, len(data) - 40):
        tampered = data[:pos] + bytes([data[pos] ^ 0x20]) + data[pos + 1 :]
        with pytest.raises(ManifestError):
            verify_manifest(tampered, sig, root)
    with pytest.raises(ManifestError):
        verify_manifest(data, sig[:-1] + bytes([sig[-1] ^ 1]), root)


def test_rerun_of_a_finished_line(
    main_line: line.LineResult, cdir: Path, p256: str, work: Path
) -> None:
    again = personalise_batch(cdir, p256, 5, work / "out-main")
    assert (again.personalised, again.skipped, again.recovered, again.scrapped) == (0, 5, 0, 0)
    assert [c.uid for c in again.cards] == [c.uid for c in main_line.cards]
    with pytest.raises(LineError, match="more than 3"):
        personalise_batch(cdir, p256, 3, work / "out-main")
    head = ceremony.open_record(cdir).head
    assert head.action == "batch.manifest.signed" and head.details["cards"] == 5


class _Torn(BaseException):
    """The line process dies (raised after the card processed the N-th APDU)."""


def _tearing_connection(after: int) -> type[LoopbackConnection]:
    sent = [0]

    class Tearing(LoopbackConnection):
        def transmit(self, apdu: bytes) -> bytes:
            response = super().transmit(apdu)
            sent[0] += 1
            if sent[0] == after:
                raise _Torn
            return response

    return Tearing


def _apdus_per_card(cdir: Path, batch: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    sent = [0]

    class Counting(LoopbackConnection):
        def transmit(self, apdu: bytes) -> bytes:
            sent[0] += 1
            return super().transmit(apdu)

    with monkeypatch.context() as mp:
        mp.setattr(line, "LoopbackConnection", Counting)
        personalise_batch(cdir, batch, 1, out)
    return sent[0]


def test_torn_at_every_stage_resumes_correctly(
    cdir: Path, p256: str, isd_master: bytes, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = _apdus_per_card(cdir, p256, work / "count", monkeypatch)
    assert total > 20
    root = ceremony.root_certificate(cdir)
    points = sorted({1, 2, total // 4, total // 2, 3 * total // 4, total - 2, total - 1, total})
    for after in points:
        out = work / f"torn-{after}"
        personalise_batch(cdir, p256, 1, out)  # card 0 done; card 1 will be torn
        with monkeypatch.context() as mp:
            mp.setattr(line, "LoopbackConnection", _tearing_connection(after))
            with pytest.raises(_Torn):
                personalise_batch(cdir, p256, 3, out)
        torn_uid = Card.open(out / "cards" / "000001").uid
        assert len(_journal(out)) == 1
        result = personalise_batch(cdir, p256, 3, out)
        assert result.skipped == 1
        if after == total:  # the card reached SECURED before the line died: kept
            assert (result.recovered, result.scrapped, result.personalised) == (1, 0, 1)
            assert result.cards[1].uid == torn_uid
        else:  # torn mid-personalisation: scrapped, redone on a fresh card
            assert (result.recovered, result.scrapped, result.personalised) == (0, 1, 2)
            assert result.cards[1].uid != torn_uid
        _check_batch(out, 3, root, isd_master)


def test_torn_journal_append_is_recovered(
    cdir: Path, p256: str, isd_master: bytes, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = work / "torn-journal"
    personalise_batch(cdir, p256, 1, out)

    def half_append(path: Path, entry: Any, *, durable: bool) -> None:
        with path.open("ab") as f:  # the process dies in the middle of the journal write
            f.write(entry.line()[:25])
        raise _Torn

    with monkeypatch.context() as mp:
        mp.setattr(line, "_append", half_append)
        with pytest.raises(_Torn):
            personalise_batch(cdir, p256, 2, out)
    assert not (out / "line.jsonl").read_bytes().endswith(b"\n")
    torn_uid = Card.open(out / "cards" / "000001").uid
    result = personalise_batch(cdir, p256, 2, out)
    assert (result.skipped, result.recovered, result.personalised, result.scrapped) == (1, 1, 0, 0)
    assert result.cards[1].uid == torn_uid
    _check_batch(out, 2, ceremony.root_certificate(cdir), isd_master)


def test_corrupt_or_foreign_journal_is_refused(cdir: Path, p256: str, work: Path) -> None:
    out = work / "bad-journal"
    out.mkdir()
    (out / "line.jsonl").write_bytes(b'{"not": "an entry"}\n')
    with pytest.raises(LineError, match="line 1 is corrupt"):
        personalise_batch(cdir, p256, 1, out)
    entry = {
        "batch": "another",
        "index": 0,
        "uid": "00" * 10,
        "attestation_cert_sha256": "00" * 32,
        "identity_public_key_pem": None,
    }
    (out / "line.jsonl").write_text(json.dumps(entry) + "\n")
    with pytest.raises(LineError, match="belongs to batch 'another'"):
        personalise_batch(cdir, p256, 1, out)
    entry["batch"] = p256
    (out / "line.jsonl").write_text(json.dumps(entry) + "\n")
    with pytest.raises(LineError, match="journaled but its directory is gone"):
        personalise_batch(cdir, p256, 1, out)
    assert not (out / "cards" / "000000").exists()  # nothing was made


@pytest.mark.slow
def test_kill_mid_batch_and_resume(cdir: Path, p256: str, isd_master: bytes, work: Path) -> None:
    out, count = work / "killed", 60
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(cdir), p256, str(count), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    journal = out / "line.jsonl"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.002)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    done_at_kill = journal.read_bytes().count(b"\n")
    assert 3 <= done_at_kill < count
    result = personalise_batch(cdir, p256, count, out)
    assert result.skipped == done_at_kill
    assert result.skipped + result.recovered + result.personalised == count
    assert result.scrapped + result.recovered <= 1  # at most the card in flight
    m = _check_batch(out, count, ceremony.root_certificate(cdir), isd_master)
    root = ceremony.root_certificate(cdir)
    for i in (0, done_at_kill - 1, done_at_kill, count - 1):  # either side of the kill
        se = SecureElement(LoopbackConnection(Card.open(out / "cards" / f"{i:06d}")))
        assert _spki(se.provisioning.provision()) == _spki(m.cards[i].identity_public_key)
        leaf, ca = decode_quote(se.attestation.attest(b"n" * 16)).certificates
        leaf.verify_directly_issued_by(ca)
        ca.verify_directly_issued_by(root)


# -- refusals -------------------------------------------------------------------------------------
def _plan_for(
    cdir: Path, batch: str, keys: StaticKeys, certified: list[bytes]
) -> PersonalisationPlan:
    info = load_batch(cdir, batch)
    store = ceremony.open_store(cdir)
    store.unlock_operational(read_line_key(info.line_key_path))

    def certify(public: Any, uid: bytes) -> Any:
        certified.append(uid)
        raise AssertionError("a SECURED card must not get this far")

    return PersonalisationPlan(
        alg=info.alg,
        master_key=store.secret(info.keys["master"]),
        operator_rekey_key=store.public_key(info.keys["operator_rekey"]),
        certify=certify,
        firmware_keys=(store.public_key(info.keys["firmware"]),),
        rotation_authority=store.public_key(info.keys["rotation_authority"]),
        current_isd_keys=keys,
        current_isd_kvn=0x31,
    )


def test_personalising_a_secured_card_is_refused(
    cdir: Path, p256: str, isd_master: bytes, work: Path
) -> None:
    out = work / "secured"
    personalise_batch(cdir, p256, 1, out)
    card_dir = out / "cards" / "000000"
    card = Card.open(card_dir)
    before = (card.info(), (card_dir / "nvm.bin").stat().st_size)
    certified: list[bytes] = []
    plan = _plan_for(cdir, p256, diversify_isd_keys(isd_master, card.uid), certified)
    with pytest.raises(AlreadyPersonalisedError, match="already SECURED"):
        run_routine(
            LoopbackConnection(card), plan, isd_keys_for=lambda u: diversify_isd_keys(isd_master, u)
        )
    assert certified == []
    reopened = Card.open(card_dir)
    assert reopened.info() == before[0]
    assert reopened.card_life_cycle == gp.CardLifeCycle.SECURED


def test_stray_secured_card_in_a_slot_is_refused_not_deleted(
    cdir: Path, p256: str, shares: list[Path], work: Path
) -> None:
    create_batch(cdir, "stray-b", "p256", shares[1:])
    personalise_batch(cdir, p256, 1, work / "stray-src")
    out = work / "stray-dst"
    (out / "cards").mkdir(parents=True)
    shutil.copytree(work / "stray-src" / "cards" / "000000", out / "cards" / "000000")
    with pytest.raises(LineError, match="SECURED but not verifiably"):
        personalise_batch(cdir, "stray-b", 2, out)
    assert (out / "cards" / "000000" / "nvm.bin").exists()


def test_rsa_batch_manifest_has_no_identity_key(cdir: Path, shares: list[Path], work: Path) -> None:
    create_batch(cdir, "rsa-a", "rsa2048", shares[:2])
    result = personalise_batch(cdir, "rsa-a", 2, work / "out-rsa")
    root = ceremony.root_certificate(cdir)
    m = verify_manifest(result.manifest_path.read_bytes(), result.signature_path.read_bytes(), root)
    assert m.algorithm is KeyAlg.RSA_2048
    doc = json.loads(result.manifest_path.read_bytes())
    assert [c["identity_public_key_pem"] for c in doc["cards"]] == [None, None]
    for i, entry in enumerate(m.cards):
        assert entry.identity_public_key is None
        se = SecureElement(LoopbackConnection(Card.open(work / "out-rsa" / "cards" / f"{i:06d}")))
        identity = se.provisioning.provision()
        quote = decode_quote(se.attestation.attest(b"r" * 16))
        leaf, ca = quote.certificates
        assert cose.verify_sign1(quote.message, leaf.public_key())  # type: ignore[arg-type]
        leaf.verify_directly_issued_by(ca)
        ca.verify_directly_issued_by(root)
        assert certificate_sha256(leaf) == entry.attestation_cert_sha256
        assert _spki(quote.identity_public_key) == _spki(identity)


# -- the CLI --------------------------------------------------------------------------------------
@pytest.fixture
def cli() -> Iterator[typer.Typer]:
    app = typer.Typer()
    app.add_typer(batch_app, name="batch")
    app.command("personalise")(personalise)
    yield app


def test_cli(cli: typer.Typer, cdir: Path, shares: list[Path], work: Path) -> None:
    runner = CliRunner()
    one = runner.invoke(
        cli,
        [
            "batch",
            "create",
            str(cdir),
            "--name",
            "cli-a",
            "--alg",
            "p256",
            "--shares",
            str(shares[0]),
        ],
    )
    assert one.exit_code == 2 and "error:" in one.output and "Traceback" not in one.output
    assert len(one.output.strip().splitlines()) == 1
    two = runner.invoke(
        cli,
        [
            "batch",
            "create",
            str(cdir),
            "--name",
            "cli-a",
            "--alg",
            "p256",
            "--shares",
            str(shares[0]),
            "--shares",
            str(shares[1]),
        ],
    )
    assert two.exit_code == 0, two.output
    words = {w for s in shares for w in s.read_text().split()}
    assert not any(
        len(w) > 3 and w in two.output.split() for w in words if w.isalpha() and w.islower()
    )
    bad = runner.invoke(
        cli,
        [
            "batch",
            "create",
            str(cdir),
            "--name",
            "cli-b",
            "--alg",
            "des",
            "--shares",
            str(shares[0]),
            "--shares",
            str(shares[1]),
        ],
    )
    assert bad.exit_code == 2 and "unknown algorithm" in bad.output
    out = work / "out-cli"
    ok = runner.invoke(
        cli, ["personalise", str(cdir), "--batch", "cli-a", "--count", "2", "--out", str(out)]
    )
    assert ok.exit_code == 0, ok.output
    assert "2 personalised" in ok.output and (out / "manifest.sig").exists()
    missing = runner.invoke(
        cli, ["personalise", str(cdir), "--batch", "nope", "--count", "2", "--out", str(out)]
    )
    assert missing.exit_code == 2 and "no batch 'nope'" in missing.output
    wrong_key = work / "wrong.key"
    wrong_key.write_text("00" * 32 + "\n")
    locked = runner.invoke(
        cli,
        [
            "personalise",
            str(cdir),
            "--batch",
            "cli-a",
            "--count",
            "2",
            "--out",
            str(out),
            "--line-key",
            str(wrong_key),
        ],
    )
    assert locked.exit_code == 2 and "line key" in locked.output


# -- the PKCS#11 backend (SoftHSM2 token of our own, never the system token directory) -----------
@pytest.mark.slow
def test_batch_and_line_on_softhsm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    softhsm = pytest.importorskip("iotid.factory.softhsm")
    if shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2-util is not installed")
    pin = "line-user-pin-0042"
    module, conf = softhsm.provision_softhsm_token(tmp_path / "hsm", "iotid-line", "so-0042", pin)
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    softhsm.unload_module(module)
    try:
        uri = f"pkcs11:token=iotid-line;module={module}"
        cer = init_ceremony(tmp_path / "c", 2, 3, hsm=uri, hsm_pin=pin)
        shares = [s.path for s in cer.share_files]
        with pytest.raises(KeyStoreError):
            create_batch(cer.directory, "h", "p256", shares[:1])
        create_batch(cer.directory, "h", "p384", shares[1:])
        store = ceremony.open_store(cer.directory)
        listed = store.keys()
        keys = {k.name: k for k in listed}
        assert store.backend == "pkcs11"
        assert keys["batch/h/ca"].tier is Tier.OPERATIONAL
        result = personalise_batch(cer.directory, "h", 2, tmp_path / "out")
        root = ceremony.root_certificate(cer.directory)
        m = verify_manifest(
            result.manifest_path.read_bytes(), result.signature_path.read_bytes(), root
        )
        for i, entry in enumerate(m.cards):
            se = SecureElement(
                LoopbackConnection(Card.open(tmp_path / "out" / "cards" / f"{i:06d}"))
            )
            assert _spki(se.provisioning.provision()) == _spki(entry.identity_public_key)
            leaf, ca = decode_quote(se.attestation.attest(b"h" * 16)).certificates
            leaf.verify_directly_issued_by(ca)
            ca.verify_directly_issued_by(root)
    finally:
        softhsm.unload_module(module)

"""The key ceremony end to end: init 2-of-3, verify, tampering, the quorum, the CLI, SoftHSM2."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import CertificatePoliciesOID
from typer.testing import CliRunner

from iotid.cli.factory_ceremony import ceremony_app
from iotid.factory import ceremony, environment
from iotid.factory.ceremony import (
    CPS_PREFIX,
    RECORD_FILE,
    ROOT_CERT_FILE,
    ROOT_KEY,
    CeremonyError,
    init_ceremony,
    quorum_unlock,
)
from iotid.factory.ceremony_verify import ceremony_reference, verify_ceremony
from iotid.factory.keystore import LockedError, QuorumError, Tier, fingerprint
from iotid.factory.shares import read_share_file
from iotid.factory.x509sign import X509SignError, sign_certificate
from iotid.spec.algorithms import KeyAlg
from support import pki
from support.pki import PublicKey

CUSTODIANS = ["alice", "bob", "carol"]
ACTIONS = [
    "record.created",
    "environment.fingerprinted",
    "keystore.created",
    "shares.issued",
    "shares.verified",
    "root.key.generated",
    "root.certificate.issued",
]
USER_PIN = "hsm-user-pin-0042"  # the throw-away SoftHSM2 token's initial user PIN


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ceremony.CeremonyResult]:
    directory = tmp_path_factory.mktemp("template") / "ceremony"
    return directory, init_ceremony(directory, 2, 3, CUSTODIANS, operator="olivia")


@pytest.fixture
def site(template: tuple[Path, ceremony.CeremonyResult], tmp_path: Path) -> Path:
    """A private copy of the template ceremony for a test to tamper with."""
    copy = tmp_path / "ceremony"
    shutil.copytree(template[0], copy)
    return copy


def _shares(site: Path, *names: str) -> list[Path]:
    return [site / "shares" / f"{name}.share" for name in names]


def _sub_ca(cn: str, root: x509.Certificate, root_public: PublicKey) -> x509.CertificateBuilder:
    """A sub-CA certificate (path length 0, a new P-256 key) for the root key to sign."""
    public = pki.new_key().public_key()
    return pki.builder(
        cn, public, issuer=root.subject, issuer_public=root_public, ca=True, path_length=0
    )


def _record_lines(site: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (site / RECORD_FILE).read_text().splitlines()]


def _write_record(site: Path, entries: list[dict[str, Any]]) -> None:
    text = "".join(
        json.dumps(e, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
        for e in entries
    )
    (site / RECORD_FILE).write_text(text)


def _rechain(entries: list[dict[str, Any]], start: int) -> None:
    """What a forger with write access does: recompute hashes and links from ``start`` on."""
    for i in range(start, len(entries)):
        if i:
            entries[i]["prev"] = entries[i - 1]["hash"]
        body = {k: v for k, v in entries[i].items() if k != "hash"}
        canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        entries[i]["hash"] = hashlib.sha256(canon.encode()).hexdigest()


# --- a good ceremony ---------------------------------------------------------------------------


def test_init_then_verify(template: tuple[Path, ceremony.CeremonyResult]) -> None:
    directory, result = template
    assert (result.threshold, result.count, result.backend) == (2, 3, "software")
    assert [(s.index, s.custodian, s.path.name) for s in result.share_files] == [
        (1, "alice", "alice.share"),
        (2, "bob", "bob.share"),
        (3, "carol", "carol.share"),
    ]
    for share in result.share_files:
        assert stat.S_IMODE(share.path.stat().st_mode) == 0o600

    report = verify_ceremony(directory)
    assert report.ceremony_id == result.ceremony_id
    assert (report.threshold, report.count, report.custodians) == (2, 3, tuple(CUSTODIANS))
    assert report.root_fingerprint == result.root_fingerprint
    assert report.root_key_fingerprint == result.root_key_fingerprint
    assert report.record_head == result.record_head
    assert report.reference.hash == result.reference
    assert report.reference.action == "root.key.generated"
    assert report.later_steps == 0

    entries = _record_lines(directory)
    assert [e["action"] for e in entries] == ACTIONS
    assert entries[0]["details"]["header"]["operator"] == "olivia"
    assert entries[3]["details"]["shares"] == [
        {"index": 1, "custodian": "alice", "file": "shares/alice.share"},
        {"index": 2, "custodian": "bob", "file": "shares/bob.share"},
        {"index": 3, "custodian": "carol", "file": "shares/carol.share"},
    ]
    assert entries[4]["details"]["unlocks"] == [[1, 2], [3, 1]]
    env = entries[1]["details"]
    assert env["packages"]["cryptography"] and len(env["iotid_source"]["sha256"]) == 64
    assert entries[5]["details"]["fingerprint"] == result.root_key_fingerprint
    assert entries[6]["details"]["certificate_sha256"] == result.root_fingerprint
    assert entries[6]["details"]["names_entry"] == entries[5]["hash"] == result.reference


def test_root_certificate_profile(template: tuple[Path, ceremony.CeremonyResult]) -> None:
    directory, result = template
    cert = result.root_certificate
    assert cert.subject == cert.issuer
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp384r1"  # type: ignore[union-attr]
    assert fingerprint(cert.public_key()) == result.root_key_fingerprint  # type: ignore[arg-type]
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    cert.verify_directly_issued_by(cert)
    assert ceremony_reference(cert) == result.reference
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(directory / ROOT_CERT_FILE)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"CPS: {CPS_PREFIX}{result.reference}" in text
    assert "X509v3 Any Policy" in text


def test_no_share_words_outside_the_share_files(
    template: tuple[Path, ceremony.CeremonyResult],
) -> None:
    directory, result = template
    record = (directory / RECORD_FILE).read_text()
    for share in result.share_files:
        words = read_share_file(share.path).split()
        assert " ".join(words[:4]) not in record
        assert " ".join(words[-4:]) not in record
    for path in directory.rglob("*"):
        if path.is_file() and "shares" not in path.parts:
            content = path.read_bytes()
            for share in result.share_files:
                assert read_share_file(share.path).encode() not in content


# --- the quorum --------------------------------------------------------------------------------


def test_root_key_needs_the_quorum(site: Path) -> None:
    store = ceremony.open_store(site)
    with pytest.raises(LockedError):
        store.signer(ROOT_KEY)
    with pytest.raises(LockedError):
        store.generate("another-root", KeyAlg.EC_P384, tier=Tier.QUORUM)
    with pytest.raises(QuorumError, match="2 of 3 shares needed, 1 given"):
        quorum_unlock(site, _shares(site, "bob"))
    with pytest.raises(QuorumError, match="same share"):
        quorum_unlock(site, _shares(site, "bob", "bob"))


def test_share_of_another_ceremony_is_refused(site: Path, tmp_path: Path) -> None:
    other = init_ceremony(tmp_path / "other", 2, 3)
    with pytest.raises(QuorumError, match="another ceremony"):
        quorum_unlock(site, [*_shares(site, "alice"), other.share_files[0].path])


@pytest.mark.parametrize("pair", [("alice", "bob"), ("carol", "alice"), ("bob", "carol")])
def test_any_two_shares_sign_with_the_root_key(site: Path, pair: tuple[str, str]) -> None:
    store = quorum_unlock(site, _shares(site, *pair))
    root = ceremony.root_certificate(site)
    signer = store.signer(ROOT_KEY)
    sub = sign_certificate(_sub_ca("sub CA", root, signer.public_key()), signer)
    sub.verify_directly_issued_by(root)


# --- tampering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("line", range(len(ACTIONS)))
def test_corrupting_any_record_line_fails(site: Path, line: int) -> None:
    raw = (site / RECORD_FILE).read_bytes().splitlines(keepends=True)
    target = raw[line]
    at = target.index(b'"time":"') + len(b'"time":"') + 3  # a digit of the year
    raw[line] = target[:at] + (b"8" if target[at : at + 1] != b"8" else b"7") + target[at + 1 :]
    (site / RECORD_FILE).write_bytes(b"".join(raw))
    with pytest.raises(CeremonyError, match=rf"record is corrupted: line {line + 1}: entry hash"):
        verify_ceremony(site)


def test_edited_entry_rechained_is_not_the_entry_the_root_names(site: Path) -> None:
    entries = _record_lines(site)
    entries[3]["details"]["shares"][2]["custodian"] = "mallory"
    _rechain(entries, 3)
    _write_record(site, entries)
    with pytest.raises(CeremonyError, match=r"names record entry .* not in this ceremony record"):
        verify_ceremony(site)


def test_edited_entry_without_rechaining(site: Path) -> None:
    entries = _record_lines(site)
    entries[0]["details"]["header"]["quorum"]["threshold"] = 1
    _write_record(site, entries)
    with pytest.raises(CeremonyError, match="line 1: entry hash does not match"):
        verify_ceremony(site)


def test_removed_issuance_entry_is_noticed(site: Path) -> None:
    lines = (site / RECORD_FILE).read_bytes().splitlines(keepends=True)
    (site / RECORD_FILE).write_bytes(b"".join(lines[:-1]))
    with pytest.raises(CeremonyError, match="does not show the root certificate's issuance"):
        verify_ceremony(site)


def _self_signed(
    key: ec.EllipticCurvePrivateKey, policies: x509.CertificatePolicies | None
) -> bytes:
    builder = pki.builder("impostor root", key.public_key(), ca=True)
    if policies is not None:
        builder = builder.add_extension(policies, critical=False)
    return builder.sign(key, hashes.SHA384()).public_bytes(serialization.Encoding.PEM)


def _policies(reference: str) -> x509.CertificatePolicies:
    return x509.CertificatePolicies(
        [x509.PolicyInformation(CertificatePoliciesOID.ANY_POLICY, [CPS_PREFIX + reference])]
    )


def test_swapped_root_without_reference(site: Path) -> None:
    (site / ROOT_CERT_FILE).write_bytes(_self_signed(ec.generate_private_key(ec.SECP384R1()), None))
    with pytest.raises(CeremonyError, match="not tied to a ceremony record"):
        verify_ceremony(site)


def test_swapped_root_with_copied_reference_is_a_key_mismatch(
    site: Path, template: tuple[Path, ceremony.CeremonyResult]
) -> None:
    impostor = _self_signed(
        ec.generate_private_key(ec.SECP384R1()), _policies(template[1].reference)
    )
    (site / ROOT_CERT_FILE).write_bytes(impostor)
    with pytest.raises(CeremonyError, match="key mismatch"):
        verify_ceremony(site)


def test_root_of_another_ceremony(site: Path, tmp_path: Path) -> None:
    other = init_ceremony(tmp_path / "other", 2, 3)
    shutil.copy(other.directory / ROOT_CERT_FILE, site / ROOT_CERT_FILE)
    with pytest.raises(CeremonyError, match="not in this ceremony record"):
        verify_ceremony(site)


def test_reference_to_the_wrong_entry(site: Path) -> None:
    first = _record_lines(site)[0]["hash"]
    key = ec.generate_private_key(ec.SECP384R1())
    (site / ROOT_CERT_FILE).write_bytes(_self_signed(key, _policies(first)))
    with pytest.raises(CeremonyError, match=r"names record line 1, a 'record\.created' step"):
        verify_ceremony(site)


def test_reissued_root_is_not_the_recorded_one(
    site: Path, template: tuple[Path, ceremony.CeremonyResult]
) -> None:
    # Someone with the quorum re-issues a root with the same key and the same reference: it is
    # a genuine signature, but not the certificate the ceremony recorded.
    store = quorum_unlock(site, _shares(site, "alice", "carol"))
    builder = ceremony._root_builder(
        store.public_key(ROOT_KEY), template[1].reference, "iotid", "iotid issuance root CA"
    )
    cert = sign_certificate(builder, store.signer(ROOT_KEY))
    (site / ROOT_CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CeremonyError, match="not the certificate the record says was issued"):
        verify_ceremony(site)


def test_root_signature_broken(site: Path) -> None:
    der = bytearray(ceremony.root_certificate(site).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x55  # inside the ECDSA signature value
    pem = x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM)
    (site / ROOT_CERT_FILE).write_bytes(pem)
    with pytest.raises(CeremonyError, match="self-signature does not verify"):
        verify_ceremony(site)


def test_missing_pieces(site: Path, tmp_path: Path) -> None:
    with pytest.raises(CeremonyError, match="no ceremony in"):
        verify_ceremony(tmp_path / "nothing")
    (site / ROOT_CERT_FILE).unlink()
    with pytest.raises(CeremonyError, match="no root certificate"):
        verify_ceremony(site)


# --- extending the record, refusing bad input ----------------------------------------------------


def test_append_step_extends_a_verified_record(site: Path) -> None:
    entry = ceremony.append_step(site, "batch.created", {"batch": "b1"}, ["alice.share"])
    report = verify_ceremony(site)
    assert report.later_steps == 1 and report.record_head == entry.hash
    raw = (site / RECORD_FILE).read_bytes().splitlines(keepends=True)
    raw[2] = raw[2].replace(b"software", b"softwarf")
    (site / RECORD_FILE).write_bytes(b"".join(raw))
    with pytest.raises(CeremonyError, match="corrupted: line 3"):
        ceremony.append_step(site, "batch.created", {"batch": "b2"}, [])


def test_init_refuses_an_existing_ceremony(site: Path) -> None:
    before = sorted(p.name for p in site.iterdir())
    with pytest.raises(CeremonyError, match="already holds a ceremony"):
        init_ceremony(site, 2, 3)
    assert sorted(p.name for p in site.iterdir()) == before


@pytest.mark.parametrize(
    ("threshold", "count", "custodians", "reason"),
    [
        (3, 2, None, "quorum must be between"),
        (1, 3, None, "1-of-N"),
        (2, 3, ["a", "b"], "3 custodians needed"),
        (2, 3, ["a", "b", "A"], "unique"),
        (2, 3, ["a", "b", "../c"], "custodian name"),
    ],
)
def test_init_rejects_bad_parameters(
    tmp_path: Path, threshold: int, count: int, custodians: list[str] | None, reason: str
) -> None:
    with pytest.raises(CeremonyError, match=reason):
        init_ceremony(tmp_path / "c", threshold, count, custodians)
    assert not (tmp_path / "c").exists()


def test_init_failure_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise X509SignError("simulated signing failure")

    monkeypatch.setattr(ceremony, "sign_certificate", broken)
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "README").write_text("kept")
    with pytest.raises(CeremonyError, match=r"rolled back.*simulated signing failure"):
        init_ceremony(directory, 2, 3)
    assert [p.name for p in directory.iterdir()] == ["README"]


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_init_and_verify(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "c"
    result = runner.invoke(
        ceremony_app,
        [
            "init",
            str(directory),
            "--quorum",
            "2-of-3",
            "--custodian",
            "alice",
            "--custodian",
            "bob",
            "--custodian",
            "carol",
        ],
    )
    assert result.exit_code == 0, result.output
    report = verify_ceremony(directory)
    flat = " ".join(result.output.split())
    assert report.root_fingerprint in flat and report.record_head in flat
    for name in CUSTODIANS:
        assert f"{name}.share" in flat
        words = read_share_file(directory / "shares" / f"{name}.share").split()
        assert " ".join(words[:3]) not in flat

    ok = runner.invoke(ceremony_app, ["verify", str(directory)])
    assert ok.exit_code == 0, ok.output
    assert "verified" in ok.output and report.root_key_fingerprint in " ".join(ok.output.split())

    again = runner.invoke(ceremony_app, ["init", str(directory), "--quorum", "2-of-3"])
    assert again.exit_code == 2 and "already holds a ceremony" in again.output

    raw = (directory / RECORD_FILE).read_bytes().replace(b'"olivia"', b'"olivia"')
    lines = raw.splitlines(keepends=True)
    lines[4] = lines[4].replace(b'"seq":4', b'"seq":5')
    (directory / RECORD_FILE).write_bytes(b"".join(lines))
    bad = runner.invoke(ceremony_app, ["verify", str(directory)])
    assert bad.exit_code == 1
    assert "does NOT verify" in bad.output and "line 5" in bad.output


@pytest.mark.parametrize("quorum", ["2of3", "two-of-three", "3-of-2"])
def test_cli_bad_quorum(tmp_path: Path, quorum: str) -> None:
    result = CliRunner().invoke(ceremony_app, ["init", str(tmp_path / "c"), "--quorum", quorum])
    assert result.exit_code == 2
    assert "error" in result.output and "Traceback" not in result.output


# --- the SoftHSM2 backend ----------------------------------------------------------------------


@pytest.fixture
def softhsm_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throw-away SoftHSM2 token in tmp_path (never the system token directory); its URI."""
    softhsm = pytest.importorskip("iotid.factory.softhsm")
    if shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2-util is not installed")
    module, conf = softhsm.provision_softhsm_token(
        tmp_path / "hsm", "iotid-root", "so-pin-0042", USER_PIN
    )
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    softhsm.unload_module(module)  # a module loaded earlier would still see another token dir
    yield f"pkcs11:token=iotid-root;module={module}"
    softhsm.unload_module(module)


@pytest.mark.slow
def test_softhsm_ceremony_end_to_end(tmp_path: Path, softhsm_token: str) -> None:
    directory = tmp_path / "c"
    result = init_ceremony(directory, 2, 3, CUSTODIANS, hsm=softhsm_token, hsm_pin=USER_PIN)
    assert result.backend == "pkcs11"
    report = verify_ceremony(directory)
    assert report.backend == "pkcs11" and report.root_fingerprint == result.root_fingerprint
    header = _record_lines(directory)[0]["details"]["header"]
    assert "iotid-root" in header["hsm"].values()
    for path in directory.rglob("*"):
        assert not path.is_file() or USER_PIN.encode() not in path.read_bytes()

    store = ceremony.open_store(directory)
    with pytest.raises(LockedError):
        store.signer(ROOT_KEY)
    with pytest.raises(QuorumError, match="2 of 3 shares needed, 1 given"):
        quorum_unlock(directory, _shares(directory, "carol"))
    store = quorum_unlock(directory, _shares(directory, "carol", "bob"))
    try:
        signer = store.signer(ROOT_KEY)
        assert fingerprint(signer.public_key()) == result.root_key_fingerprint
        root = ceremony.root_certificate(directory)
        builder = _sub_ca("hsm sub CA", root, signer.public_key())
        sign_certificate(builder, signer).verify_directly_issued_by(root)
    finally:
        store.lock()


@pytest.mark.slow
def test_softhsm_cli(tmp_path: Path, softhsm_token: str) -> None:
    directory = tmp_path / "c"
    runner = CliRunner()
    result = runner.invoke(
        ceremony_app,
        ["init", str(directory), "--quorum", "2-of-2", "--hsm", softhsm_token],
        env={"IOTID_HSM_PIN": USER_PIN},
    )
    assert result.exit_code == 0, result.output
    assert "key store: pkcs11" in result.output
    ok = runner.invoke(ceremony_app, ["verify", str(directory)])
    assert ok.exit_code == 0, ok.output
    assert "pkcs11" in ok.output


def test_hsm_uri_with_a_pin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CeremonyError, match="PIN does not belong in the URI"):
        init_ceremony(tmp_path / "c", 2, 3, hsm="pkcs11:token=x;module=/m.so;pin-value=1234")
    assert not any((tmp_path / "c").iterdir())


def test_environment_source_digest(tmp_path: Path) -> None:
    tree = tmp_path / "pkg"
    (tree / "sub" / "__pycache__").mkdir(parents=True)
    (tree / "a.py").write_text("a = 1\n")
    (tree / "sub" / "b.py").write_text("b = 2\n")
    digest, files = environment.source_tree_digest(tree)
    assert files == 2
    (tree / "sub" / "__pycache__" / "b.cpython-311.pyc").write_bytes(b"junk")
    assert environment.source_tree_digest(tree) == (digest, 2)
    (tree / "sub" / "b.py").write_text("b = 3\n")
    assert environment.source_tree_digest(tree)[0] != digest
    facts = environment.fingerprints("software")
    assert facts["keystore_backend"] == "software"
    assert facts["packages"]["shamir-mnemonic"] != "not installed"
    assert "SOFTHSM2_CONF" not in json.dumps(facts)

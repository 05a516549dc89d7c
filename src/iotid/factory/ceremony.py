"""The key ceremony: the issuance root CA created under an M-of-N quorum, and its audit trail.

Scope: :func:`init_ceremony` creates, in one directory, the key store (``stores``), one SLIP-39
share file per custodian, the issuance root CA key (EC P-384, QUORUM tier: it never leaves the
backend) and its self-signed certificate, and a hash-chained record (``record``) of every step.
:func:`quorum_unlock`, :func:`open_store`, :func:`root_certificate`, :func:`open_record` and
:func:`append_step` are what the other factory steps (batches) and ``ceremony_verify`` use.

Layout of a ceremony directory::

    ceremony.jsonl        the record (``record.FORMAT``)
    root.pem              the issuance root CA certificate
    keystore.json, ...    the key store (``stores``: the ceremony directory is the store's)
    shares/<name>.share   one share per custodian: each custodian takes theirs away, and the
                          directory must not stay next to the store after the ceremony

Steps recorded by ``init``: ``record.created`` (ceremony id, quorum, custodians, operator),
``environment.fingerprinted`` (``environment``), ``keystore.created``, ``shares.issued``
(indices and custodians: never the words), ``shares.verified`` (every share file was read back
and took part in a successful unlock), ``root.key.generated`` (fingerprint and public key),
``root.certificate.issued`` (certificate SHA-256, serial, validity).

How the root certificate refers to the record: the hash of the record's head *after the root key
was generated* (the ``root.key.generated`` entry) goes into the certificate as a CPS pointer
qualifier, ``urn:iotid:ceremony:sha256:<64 hex>``, of an ``anyPolicy`` CertificatePolicies
extension (RFC 5280 §4.2.1.4; non-critical). Chosen over a private extension because every X.509
tool displays it (``openssl x509 -text`` shows ``CPS: urn:iotid:...``) and path validation
ignores a trust anchor's policies, so the pointer changes no relying party's behaviour. The
certificate cannot name the entry recording its own issuance (that entry contains the
certificate's hash), so the record closes the loop the other way: the entry right after the one
named must be ``root.certificate.issued`` with this certificate's SHA-256. Together the two
anchor the record against the removal of its own newest entries up to that point.
Not in scope: checking a finished ceremony (``ceremony_verify``: :func:`verify_ceremony`,
reading the reference back out of a certificate), key store backends (``softstore``,
``hsmstore``, ``stores``), batches.
"""

from __future__ import annotations

import datetime as dt
import getpass
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import CertificatePoliciesOID, NameOID

from iotid.factory import environment, stores
from iotid.factory import shares as slip39
from iotid.factory.keystore import KeyStoreError, PublicKey, Tier, fingerprint
from iotid.factory.profiles import CA_KEY_USAGE
from iotid.factory.record import Entry, Record, RecordError
from iotid.factory.x509sign import X509SignError, sign_certificate
from iotid.spec import ceremony_record
from iotid.spec.algorithms import KeyAlg
from iotid.spec.manifest import certificate_sha256

RECORD_FILE = "ceremony.jsonl"
ROOT_CERT_FILE = "root.pem"
SHARES_DIR = "shares"
SHARE_SUFFIX = ".share"
ROOT_KEY = "issuance-root"
ROOT_ALG = KeyAlg.EC_P384
CPS_PREFIX = ceremony_record.CPS_PREFIX
ROOT_KEY_GENERATED = "root.key.generated"
ROOT_CERT_ISSUED = "root.certificate.issued"
_VALIDITY = dt.timedelta(days=365 * 20)
_CUSTODIAN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class CeremonyError(Exception):
    """The ceremony cannot be performed or does not verify; the message says why (no secrets)."""


@dataclass(frozen=True)
class ShareFile:
    index: int
    custodian: str
    path: Path


@dataclass(frozen=True)
class CeremonyResult:
    directory: Path
    ceremony_id: str
    threshold: int
    count: int
    backend: str
    share_files: tuple[ShareFile, ...]
    root_certificate: x509.Certificate
    #: SHA-256 (hex) of the root certificate's DER.
    root_fingerprint: str
    #: SHA-256 (hex) of the root public key's SubjectPublicKeyInfo (``keystore.fingerprint``).
    root_key_fingerprint: str
    #: The record entry hash the certificate names.
    reference: str
    record_head: str


def init_ceremony(
    directory: Path,
    threshold: int,
    count: int,
    custodians: Sequence[str] | None = None,
    *,
    hsm: str | None = None,
    hsm_pin: str | None = None,
    operator: str | None = None,
    organisation: str = "iotid",
    common_name: str = "iotid issuance root CA",
) -> CeremonyResult:
    """Run the ceremony in ``directory`` (created if missing; refused if it holds one already).

    ``hsm``: a PKCS#11 URI (``stores.parse_pkcs11_uri``) for the root key, ``hsm_pin`` the
    token's current user PIN, which the ceremony replaces by one only the quorum recovers.
    On failure everything this call created in ``directory`` is removed (objects an HSM generated
    stay in its token), and CeremonyError says what went wrong.
    """
    directory = Path(directory)
    names = _check_custodians(custodians, threshold, count)
    for existing in (RECORD_FILE, ROOT_CERT_FILE, stores.CONFIG_FILE, SHARES_DIR):
        if (directory / existing).exists():
            raise CeremonyError(f"{directory} already holds a ceremony ({existing} exists)")
    directory.mkdir(parents=True, exist_ok=True)
    before = set(directory.iterdir())
    try:
        return _run(
            directory, threshold, count, names, (hsm, hsm_pin), operator, organisation, common_name
        )
    except BaseException as exc:
        for path in set(directory.iterdir()) - before:  # nothing half-done: undo this call
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if not isinstance(exc, KeyStoreError | RecordError | X509SignError | OSError | ValueError):
            raise
        hint = (
            " (the token may keep objects it generated, and its user PIN may have been changed: "
            "reset it with the SO PIN before trying again)"
            if hsm
            else ""
        )
        raise CeremonyError(f"ceremony failed and was rolled back{hint}: {exc}") from None


def _run(
    directory: Path,
    threshold: int,
    count: int,
    custodians: list[str],
    hsm: tuple[str | None, str | None],
    operator: str | None,
    organisation: str,
    common_name: str,
) -> CeremonyResult:
    operator = operator or _current_user()
    everyone = [operator, *custodians]
    ceremony_id = str(uuid.uuid4())
    uri, pin = hsm
    token = None
    if uri is not None:
        module, label = stores.parse_pkcs11_uri(uri)
        token = {"module": module, "token": label}
    header: dict[str, Any] = {
        "ceremony_id": ceremony_id,
        "purpose": "issuance root CA",
        "quorum": {"threshold": threshold, "count": count},
        "custodians": custodians,
        "operator": operator,
        "hsm": token,
    }
    record = Record.create(directory / RECORD_FILE, header, [operator])
    backend_name = "pkcs11" if uri else "software"
    record.append("environment.fingerprinted", environment.fingerprints(backend_name), ["iotid"])

    store, share_set = stores.create_store(directory, threshold, count, hsm=uri, hsm_pin=pin)
    try:
        record.append(
            "keystore.created",
            {
                "backend": store.backend,
                "slip39_identifier": share_set.identifier,
                "quorum": {"threshold": threshold, "count": count},
                "hsm": token,
            },
            [operator],
        )

        share_dir = directory / SHARES_DIR
        share_dir.mkdir(mode=0o700)
        files: list[ShareFile] = []
        for index, (custodian, mnemonic) in enumerate(
            zip(custodians, share_set.mnemonics, strict=True), start=1
        ):
            path = share_dir / f"{custodian}{SHARE_SUFFIX}"
            slip39.write_share_file(path, index, mnemonic, ceremony_id, custodian=custodian)
            files.append(ShareFile(index, custodian, path))
        record.append(
            "shares.issued",
            {
                "slip39_identifier": share_set.identifier,
                "threshold": threshold,
                "count": count,
                "shares": [
                    {"index": f.index, "custodian": f.custodian, "file": _rel(f.path, directory)}
                    for f in files
                ],
            },
            everyone,
        )

        # Every share file, read back, takes part in at least one successful unlock.
        checked: list[list[int]] = []
        for start in range(0, count, threshold):
            group = [files[(start + k) % count] for k in range(threshold)]
            store.unlock_quorum([slip39.read_share_file(f.path) for f in group])
            checked.append([f.index for f in group])
        record.append("shares.verified", {"unlocks": checked}, everyone)

        public = store.generate(ROOT_KEY, ROOT_ALG, tier=Tier.QUORUM)
        key_fp = fingerprint(public)
        spki_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
        record.append(
            ROOT_KEY_GENERATED,
            {
                "key": ROOT_KEY,
                "alg": ROOT_ALG.name,
                "tier": Tier.QUORUM.value,
                "backend": store.backend,
                "fingerprint": key_fp,
                "public_key": spki_pem,
            },
            everyone,
        )

        reference = record.head_hash
        cert = sign_certificate(
            _root_builder(public, reference, organisation, common_name), store.signer(ROOT_KEY)
        )
        _write_new(directory / ROOT_CERT_FILE, cert.public_bytes(serialization.Encoding.PEM))
        cert_fp = certificate_sha256(cert)
        record.append(
            ROOT_CERT_ISSUED,
            {
                "file": ROOT_CERT_FILE,
                "certificate_sha256": cert_fp,
                "serial": format(cert.serial_number, "x"),
                "subject": cert.subject.rfc4514_string(),
                "not_before": cert.not_valid_before_utc.isoformat(),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "key_fingerprint": key_fp,
                "names_entry": reference,
            },
            everyone,
        )
        return CeremonyResult(
            directory,
            ceremony_id,
            threshold,
            count,
            store.backend,
            tuple(files),
            cert,
            cert_fp,
            key_fp,
            reference,
            record.head_hash,
        )
    finally:
        store.lock()  # PKCS#11: also logs out of the token


def _root_builder(
    public: PublicKey, reference: str, organisation: str, common_name: str
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    usage = CA_KEY_USAGE
    policy = x509.PolicyInformation(CertificatePoliciesOID.ANY_POLICY, [CPS_PREFIX + reference])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        # RFC 5280 §4.2.1.9 / §4.2.1.3: a CA, path length left open for the batch and fleet CAs.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .add_extension(x509.CertificatePolicies([policy]), critical=False)
    )


# --- what other factory steps use --------------------------------------------------------------


def open_record(directory: Path) -> Record:
    """The ceremony's record, fully verified (CeremonyError if it is corrupted or missing)."""
    path = Path(directory) / RECORD_FILE
    if not path.exists():
        raise CeremonyError(f"no ceremony in {directory} ({RECORD_FILE} missing)")
    try:
        return Record.open(path)
    except RecordError as exc:
        raise CeremonyError(f"the ceremony record is corrupted: {exc}") from None


def root_certificate(directory: Path) -> x509.Certificate:
    path = Path(directory) / ROOT_CERT_FILE
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CeremonyError(f"no root certificate in {directory} ({ROOT_CERT_FILE})") from None
    except ValueError:
        raise CeremonyError(f"{path} is not a PEM certificate") from None
    except OSError as exc:
        raise CeremonyError(f"cannot read {path}: {exc.strerror}") from None


def open_store(directory: Path) -> stores.ManagedKeyStore:
    """The ceremony's key store, locked (KeyStoreError if there is none)."""
    return stores.open_store(Path(directory))


def quorum_unlock(directory: Path, share_files: Sequence[Path]) -> stores.ManagedKeyStore:
    """The ceremony's key store with its QUORUM tier unlocked by the given share files.

    Records nothing (callers record what they do with it). QuorumError (a KeyStoreError) when
    the shares are too few, malformed, repeated or of another ceremony.
    """
    store = open_store(directory)
    store.unlock_quorum([slip39.read_share_file(Path(p)) for p in share_files])
    return store


def append_step(
    directory: Path, action: str, details: Mapping[str, Any], actors: Sequence[str]
) -> Entry:
    """Verify the whole record, then append one step to it (CeremonyError if it is corrupted)."""
    record = open_record(directory)
    try:
        return record.append(action, details, actors)
    except RecordError as exc:
        raise CeremonyError(f"cannot extend the ceremony record: {exc}") from None


# --- helpers ------------------------------------------------------------------------------------


def _check_custodians(custodians: Sequence[str] | None, threshold: int, count: int) -> list[str]:
    try:
        slip39.check_quorum(threshold, count)
    except ValueError as exc:
        raise CeremonyError(str(exc)) from None
    names = list(custodians) if custodians else [f"custodian-{i}" for i in range(1, count + 1)]
    if len(names) != count:
        raise CeremonyError(
            f"{count} custodians needed for {threshold}-of-{count}, {len(names)} named"
        )
    for name in names:
        if not _CUSTODIAN.fullmatch(name):
            raise CeremonyError(
                f"custodian name {name!r}: 1-64 letters, digits, '.', '_', '-' (not first)"
            )
    if len({n.lower() for n in names}) != len(names):
        raise CeremonyError("custodian names must be unique (case-insensitively)")
    return names


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def _rel(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _write_new(path: Path, data: bytes) -> None:
    with path.open("xb") as f:
        f.write(data)


__all__ = [
    "CPS_PREFIX",
    "RECORD_FILE",
    "ROOT_ALG",
    "ROOT_CERT_FILE",
    "ROOT_CERT_ISSUED",
    "ROOT_KEY",
    "ROOT_KEY_GENERATED",
    "SHARES_DIR",
    "CeremonyError",
    "CeremonyResult",
    "ShareFile",
    "append_step",
    "certificate_sha256",
    "init_ceremony",
    "open_record",
    "open_store",
    "quorum_unlock",
    "root_certificate",
]

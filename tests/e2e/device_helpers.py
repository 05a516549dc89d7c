"""Helpers for the ``iotid device`` / ``iotid se`` end-to-end tests (tests/e2e/test_device_cli.py).

Scope: running the venv's ``iotid`` console script as a subprocess, reading the development PKI
directory the CLI writes, a small test CA built with ``cryptography`` (server certificate, client
certificate for a CSR) and a bounded ``openssl s_server`` in ``-rev`` mode that demands a client
certificate. Nothing here talks to a card in-process except where a test asks for it.

Not covered: the PC/SC stack (tests/e2e/conftest.py), the library-level TLS interop
(tests/integration/test_tls_openssl.py, whose harness this one follows).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IOTID = Path(sys.executable).with_name("iotid")
CLI_TIMEOUT = 60.0
SERVER_TIMEOUT = 20.0

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


# -- the CLI ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cli:
    """One finished ``iotid`` run."""

    args: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err

    def __str__(self) -> str:  # shown by pytest when an assertion on a run fails
        head = f"iotid {' '.join(self.args)} -> {self.code}"
        return f"{head}\n--stdout--\n{self.out}--stderr--\n{self.err}"


def iotid(*args: str | Path, cwd: Path | None = None) -> Cli:
    """Run ``iotid ARGS`` (wide terminal so rich does not wrap the lines we look at)."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    argv = tuple(str(a) for a in args)
    done = subprocess.run(
        [str(IOTID), *argv],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        cwd=cwd,
        env=env,
    )
    return Cli(argv, done.returncode, done.stdout, done.stderr)


# -- the development PKI directory ------------------------------------------------------------
def load_private(path: Path) -> PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key


def load_public_pem(text: str) -> PublicKey:
    key = serialization.load_pem_public_key(text.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return key


def spki_der(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def master_key(pki: Path) -> bytes:
    return bytes.fromhex((pki / "master.key").read_text().strip())


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of a directory, by name."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# -- a test CA (cryptography) -----------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def write_pem(path: Path, item: x509.Certificate | PrivateKey) -> Path:
    if isinstance(item, x509.Certificate):
        path.write_bytes(item.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            item.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


def _issue(
    cn: str,
    public: PublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class TestCa:
    """An EC P-256 CA issuing the TLS server certificate and the device's client certificate."""

    __test__ = False  # not a pytest test class

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, cn: str) -> TestCa:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, _issue(cn, key.public_key(), _name(cn), key, ca=True))

    @classmethod
    def sub(cls, parent: TestCa, cn: str) -> TestCa:
        """An intermediate CA under ``parent``."""
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, _issue(cn, key.public_key(), parent.cert.subject, parent.key, ca=True))

    def issue(
        self,
        cn: str,
        public: PublicKey,
        *,
        san: list[x509.GeneralName] | None = None,
        eku: list[x509.ObjectIdentifier] | None = None,
    ) -> x509.Certificate:
        return _issue(cn, public, self.cert.subject, self.key, san=san, eku=eku)

    def server(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """``stem.pem`` / ``stem.key``: a server certificate for localhost and 127.0.0.1."""
        key = ec.generate_private_key(ec.SECP256R1())
        san: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        cert = self.issue(
            "localhost", key.public_key(), san=san, eku=[ExtendedKeyUsageOID.SERVER_AUTH]
        )
        return write_pem(directory / f"{stem}.pem", cert), write_pem(directory / f"{stem}.key", key)

    def client_for_csr(self, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        public = csr.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(cn[0].value) if cn else "device"
        return self.issue(name, public, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])


# -- openssl s_server -------------------------------------------------------------------------
@dataclass
class SServer:
    proc: subprocess.Popen[str]
    pump: threading.Thread = field(init=False)
    port: int = 0
    lines: list[str] = field(default_factory=list)
    accepting: threading.Event = field(default_factory=threading.Event)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("ACCEPT") and not self.accepting.is_set():
                self.port = int(line.rsplit(":", 1)[1])
                self.accepting.set()

    def output(self) -> str:
        """Everything s_server printed, once it has exited (it serves one connection)."""
        try:
            self.proc.wait(timeout=SERVER_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.pump.join(SERVER_TIMEOUT)
        return "".join(self.lines)


@contextmanager
def s_server(ca: Path, cert: Path, key: Path, version: str) -> Iterator[SServer]:
    """``openssl s_server`` demanding a client certificate from ``ca``, one connection, in
    ``-rev`` mode: each line comes back reversed, and a ``CLOSE`` line ends the connection with
    a close_notify (the default mode cuts the TCP stream, which a careful client must treat as
    a possible truncation)."""
    cmd = [
        "openssl", "s_server", "-Verify", "1", "-verify_return_error",
        "-accept", "127.0.0.1:0", "-naccept", "1",
        "-CAfile", str(ca), "-cert", str(cert), "-key", str(key),
        "-tls1_3" if version == "1.3" else "-tls1_2", "-rev",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = SServer(proc)
    server.pump = threading.Thread(target=server._pump, daemon=True)
    server.pump.start()
    try:
        if not server.accepting.wait(SERVER_TIMEOUT):
            raise AssertionError("s_server did not print ACCEPT: " + "".join(server.lines))
        yield server
    finally:
        if proc.poll() is None:
            try:
                proc.wait(timeout=SERVER_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.pump.join(timeout=5)

"""Helpers for the ``iotid device`` / ``iotid se`` end-to-end tests (tests/e2e/test_device_cli.py).

Scope: running the venv's ``iotid`` console script as a subprocess, reading the development PKI
directory the CLI writes, a small test CA (server certificate, client certificate for a CSR, on
``support.pki``) and a bounded ``openssl s_server`` in ``-rev`` mode that demands a client
certificate (``support.tls``). Nothing here talks to a card in-process except where a test asks
for it.

Not covered: the PC/SC stack (tests/e2e/conftest.py), the library-level TLS interop
(tests/integration/test_tls_openssl.py, whose harness this one follows).
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from support.pki import Ca, PrivateKey, PublicKey, write_pem
from support.pki import ca as root_ca
from support.tls import SServer
from support.tls import s_server as openssl_s_server

IOTID = Path(sys.executable).with_name("iotid")
CLI_TIMEOUT = 60.0


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
@dataclass
class TestCa:
    """An EC P-256 CA issuing the TLS server certificate and the device's client certificate."""

    __test__ = False  # not a pytest test class

    ca: Ca

    @property
    def cert(self) -> x509.Certificate:
        return self.ca.cert

    @classmethod
    def make(cls, cn: str) -> TestCa:
        return cls(root_ca(cn))

    @classmethod
    def sub(cls, parent: TestCa, cn: str) -> TestCa:
        """An intermediate CA under ``parent``."""
        return cls(parent.ca.sub(cn))

    def server(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """``stem.pem`` / ``stem.key``: a server certificate for localhost and 127.0.0.1."""
        cert, key = self.ca.server()
        return write_pem(directory / f"{stem}.pem", cert), write_pem(directory / f"{stem}.key", key)

    def client_for_csr(self, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        public = csr.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(cn[0].value) if cn else "device"
        return self.ca.client(name, public)


# -- openssl s_server -------------------------------------------------------------------------
def s_server(ca: Path, cert: Path, key: Path, version: str) -> AbstractContextManager[SServer]:
    """``openssl s_server`` demanding a client certificate from ``ca``, one connection, in
    ``-rev`` mode: each line comes back reversed, and a ``CLOSE`` line ends the connection with
    a close_notify (the default mode cuts the TCP stream, which a careful client must treat as
    a possible truncation). ``version``: ``1.3`` or ``1.2``."""
    return openssl_s_server(ca, cert, key, version == "1.3")

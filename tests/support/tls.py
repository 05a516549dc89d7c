"""Plumbing of the mutual-TLS interop tests (and of ``bench/bench_tls.py``): ``DigestSigner``
stand-ins, an emulated card with the mTLS applet, the test PKI they share, and a bounded
``openssl s_server``.

Scope: :class:`SoftwareSigner` (a ``cryptography`` key behind ``DigestSigner``),
:class:`Recording` (remembers every (hash, scheme) it signed with), :func:`mtls_card` /
:func:`card_signer` (a card personalised over SCP03 with the identity key put in directly),
:class:`TlsPki` (fleet CA, rogue CA, their localhost servers as PEM files, one client key and
certificate per algorithm of :data:`KEYS`), :func:`line_echo`, and :func:`s_server`
(``openssl s_server -rev`` demanding a client certificate, one connection, killed after a
timeout).

Not covered: the Python ``ssl`` server (its one user keeps it), the checks themselves.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from iotid.host.mtls import MtlsSession, perso_dgis
from iotid.host.protocol import SmartCardProtocol
from iotid.host.securitydomain import SecurityDomainSession
from iotid.host.tls import DigestSigner, TlsClient
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.mtls import MtlsApplet
from iotid.se.identity import IdentityStore
from iotid.spec import mtls
from iotid.spec.algorithms import KeyAlg
from iotid.transport.loopback import LoopbackConnection
from support.pki import Ca, PrivateKey, PublicKey, ca, new_key, write_pem

HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}
SERVER_TIMEOUT = 20.0
#: The client key algorithms of the interop tests, by their test id.
KEYS = {"p256": KeyAlg.EC_P256, "p384": KeyAlg.EC_P384, "rsa2048": KeyAlg.RSA_2048}
#: The (hash, scheme) each client key signs its CertificateVerify with.
EXPECTED = {"p256": ("sha256", "ecdsa"), "p384": ("sha384", "ecdsa"), "rsa2048": ("sha256", "pss")}
VERSIONS = ["TLS1.3", "TLS1.2"]


# -- signers -------------------------------------------------------------------------------------
class SoftwareSigner:
    """DigestSigner over a cryptography private key (stand-in for the SE)."""

    def __init__(self, key: PrivateKey) -> None:
        self._key = key

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign_digest(self, digest: bytes, hash_name: str, scheme: str) -> bytes:
        algo = HASHES[hash_name]
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            assert scheme == "ecdsa"
            return self._key.sign(digest, ec.ECDSA(Prehashed(algo)))
        pad: padding.AsymmetricPadding = (
            padding.PSS(padding.MGF1(algo), algo.digest_size)
            if scheme == "pss"
            else padding.PKCS1v15()
        )
        return self._key.sign(digest, pad, Prehashed(algo))


@dataclass
class Recording:
    """Wraps a signer; remembers (hash_name, scheme) of every signature it made."""

    inner: DigestSigner
    calls: list[tuple[str, str]] = field(default_factory=list)

    def public_key(self) -> PublicKey:
        return self.inner.public_key()

    def sign_digest(self, digest: bytes, hash_name: str, scheme: str) -> bytes:
        self.calls.append((hash_name, scheme))
        return self.inner.sign_digest(digest, hash_name, scheme)


def mtls_card(
    key: PrivateKey,
    *,
    uid: bytes = bytes(range(10)),
    schemes: set[str] | None = None,
    alg: KeyAlg | None = None,
) -> tuple[Card, MtlsSession]:
    """A card with the mTLS applet personalised (``perso_dgis(schemes, alg=alg)``) and ``key``
    as its identity key; the session reaches it over the loopback transport."""
    card = Card.create(None, uid=uid, applets=[MtlsApplet])
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(mtls.AID)
    sd.store_data(perso_dgis(schemes, alg=alg))
    with card.nvm.transaction():
        IdentityStore(card.nvm, card.keys).provision(key)
    return card, MtlsSession(SmartCardProtocol(LoopbackConnection(card)))


def card_signer(
    key: PrivateKey, client_cert: x509.Certificate, schemes: set[str] | None = None
) -> MtlsSession:
    """:func:`mtls_card` (``schemes`` allowed) with the client certificate stored."""
    _card, session = mtls_card(key, schemes=schemes)
    session.install_chain([client_cert])
    return session


# -- the PKI of the interop tests ----------------------------------------------------------------
@dataclass
class TlsPki:
    """In ``dir``: ``ca.pem``, ``server.pem``/``.key`` (from ``ca``) and ``rogue-server.pem``/
    ``.key`` (from ``rogue``); a client key and a ``device-<alg>`` certificate per :data:`KEYS`."""

    dir: Path
    ca: Ca
    rogue: Ca
    keys: dict[str, PrivateKey]
    client_certs: dict[str, x509.Certificate]

    @classmethod
    def create(cls, directory: Path) -> TlsPki:
        fleet, rogue = ca("iotid test fleet CA"), ca("rogue CA")
        write_pem(directory / "ca.pem", fleet.cert)
        keys = {label: new_key(alg) for label, alg in KEYS.items()}
        certs = {
            label: fleet.client(f"device-{label}", key.public_key()) for label, key in keys.items()
        }
        pki = cls(directory, fleet, rogue, keys, certs)
        pki.write_server("server", fleet)
        pki.write_server("rogue-server", rogue)
        return pki

    def write_server(self, stem: str, issuer: Ca, alg: KeyAlg = KeyAlg.EC_P256) -> None:
        """``stem.pem`` / ``stem.key``: a localhost server certificate from ``issuer``."""
        cert, key = issuer.server(alg)
        write_pem(self.dir / f"{stem}.pem", cert)
        write_pem(self.dir / f"{stem}.key", key)

    def signer_for(self, alg: str, kind: str) -> tuple[DigestSigner, list[x509.Certificate]]:
        """The signer and the client chain: from the test PKI, or as the card stores it."""
        key, cert = self.keys[alg], self.client_certs[alg]
        if kind == "software":
            return SoftwareSigner(key), [cert]
        session = card_signer(key, cert)
        return session, session.chain()


def line_echo(client: TlsClient, text: bytes) -> bytes:
    """Send one line, read until a whole line is back."""
    client.sendall(text + b"\n")
    got = b""
    while not got.endswith(b"\n"):
        chunk = client.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


# -- openssl s_server ----------------------------------------------------------------------------
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
        """Everything s_server printed, once it has exited (it serves one connection) and its
        pipe has been read to the end."""
        try:
            self.proc.wait(timeout=SERVER_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.pump.join(SERVER_TIMEOUT)
        return "".join(self.lines)


@contextmanager
def s_server(ca_file: Path, cert: Path, key: Path, tls13: bool, *extra: str) -> Iterator[SServer]:
    """``openssl s_server`` demanding a client certificate from ``ca_file``, one connection, in
    ``-rev`` mode: each line comes back reversed, and a ``CLOSE`` line ends the connection with
    a close_notify. TLS 1.3 or 1.2 only; ``extra`` options are appended."""
    cmd = [
        "openssl", "s_server", "-Verify", "1", "-verify_return_error",
        "-CAfile", str(ca_file), "-cert", str(cert), "-key", str(key),
        # the kernel picks a free port; s_server prints it on its ACCEPT line
        "-accept", "127.0.0.1:0", "-naccept", "1",
        "-tls1_3" if tls13 else "-tls1_2", "-rev", *extra,
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

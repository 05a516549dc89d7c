"""Interop: the tlslite-ng key adapter (``iotid.host.tls``) against ``openssl s_server``.

The server demands a client certificate from our CA (``-Verify 1 -verify_return_error``) and
runs in ``-rev`` mode (each line comes back reversed). Client keys P-256, P-384 and RSA-2048,
TLS 1.3 and 1.2, each signed by a software signer and by the mTLS applet on an emulated card
(key provisioned into the identity slot, signatures over APDUs). Negative cases: a client
certificate from another CA, a server certificate from another CA or for another name.
Every s_server is bounded (``-naccept 1``, a kill after a timeout).
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotid.host.mtls import MtlsSession, perso_dgis
from iotid.host.protocol import SmartCardProtocol
from iotid.host.securitydomain import SecurityDomainSession
from iotid.host.tls import DigestSigner, TlsClient, TlsError, TlsVerificationError, connect
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.mtls import MtlsApplet
from iotid.se.identity import IdentityStore
from iotid.spec import mtls
from iotid.transport.loopback import LoopbackConnection

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI"),
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}
SERVER_TIMEOUT = 20.0


# -- test PKI -----------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(
    cn: str,
    public: PublicKey,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    eku: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    b = b.add_extension(
        x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, **usage),
        critical=True,
    )
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


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


@dataclass
class Authority:
    key: PrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls, cn: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, issue(cn, key.public_key(), _name(cn), key, ca=True))

    def server(self) -> tuple[x509.Certificate, PrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        san: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        cert = issue(
            "localhost",
            key.public_key(),
            self.cert.subject,
            self.key,
            san=san,
            eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        )
        return cert, key

    def client(self, cn: str, public: PublicKey) -> x509.Certificate:
        eku = [ExtendedKeyUsageOID.CLIENT_AUTH]
        return issue(cn, public, self.cert.subject, self.key, eku=eku)


# -- signers ------------------------------------------------------------------------------------
class SoftwareSigner:
    """DigestSigner over a cryptography private key (stand-in for the SE)."""

    def __init__(self, key: PrivateKey) -> None:
        self._key = key

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign_digest(self, digest: bytes, hash_name: str, scheme: str) -> bytes:
        algo = _HASHES[hash_name]
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


def card_signer(key: PrivateKey, client_cert: x509.Certificate) -> MtlsSession:
    """A card with the mTLS applet personalised, ``key`` as its identity key and the client
    certificate stored; the session reaches it over the loopback transport."""
    card = Card.create(None, uid=bytes(range(10)), applets=[MtlsApplet])
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(mtls.AID)
    sd.store_data(perso_dgis())
    with card.nvm.transaction():
        IdentityStore(card.nvm, card.keys).provision(key)
    session = MtlsSession(SmartCardProtocol(LoopbackConnection(card)))
    session.install_chain([client_cert])
    return session


KEYS: dict[str, Callable[[], PrivateKey]] = {
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": lambda: rsa.generate_private_key(65537, 2048),
}
EXPECTED = {"p256": ("sha256", "ecdsa"), "p384": ("sha384", "ecdsa"), "rsa2048": ("sha256", "pss")}


@dataclass
class Pki:
    dir: Path
    ca: Authority
    rogue: Authority
    keys: dict[str, PrivateKey]
    client_certs: dict[str, x509.Certificate]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("tls-openssl")
    ca, rogue = Authority.make("iotid test fleet CA"), Authority.make("rogue CA")
    write_pem(d / "ca.pem", ca.cert)
    server, server_key = ca.server()
    write_pem(d / "server.pem", server)
    write_pem(d / "server.key", server_key)
    rogue_server, rogue_key = rogue.server()
    write_pem(d / "rogue-server.pem", rogue_server)
    write_pem(d / "rogue-server.key", rogue_key)
    keys = {name: make() for name, make in KEYS.items()}
    certs = {name: ca.client(f"device-{name}", k.public_key()) for name, k in keys.items()}
    return Pki(d, ca, rogue, keys, certs)


def signer_for(pki: Pki, alg: str, kind: str) -> tuple[DigestSigner, list[x509.Certificate]]:
    """The signer and the client chain: from the test PKI, or as the card stores it."""
    key, cert = pki.keys[alg], pki.client_certs[alg]
    if kind == "software":
        return SoftwareSigner(key), [cert]
    session = card_signer(key, cert)
    return session, session.chain()


# -- s_server -----------------------------------------------------------------------------------
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
def s_server(pki: Pki, version: str, *extra: str, cert: str = "server") -> Iterator[SServer]:
    cmd = [
        "openssl",
        "s_server",
        "-Verify",
        "1",
        "-verify_return_error",
        "-CAfile",
        str(pki.dir / "ca.pem"),
        "-cert",
        str(pki.dir / f"{cert}.pem"),
        "-key",
        str(pki.dir / f"{cert}.key"),
        "-accept",
        "127.0.0.1:0",  # the kernel picks a free port; s_server prints it on its ACCEPT line
        "-naccept",
        "1",
        "-tls1_3" if version == "TLS1.3" else "-tls1_2",
        "-rev",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = SServer(proc)
    server.pump = threading.Thread(target=server._pump, daemon=True)
    server.pump.start()
    try:
        if not server.accepting.wait(SERVER_TIMEOUT):
            pytest.fail("s_server did not print ACCEPT: " + "".join(server.lines))
        yield server
    finally:
        if proc.poll() is None:
            try:
                proc.wait(timeout=SERVER_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        server.pump.join(timeout=5)


def echo(client: TlsClient, text: bytes) -> bytes:
    """Send one line, read until the reversed line is back."""
    client.sendall(text + b"\n")
    got = b""
    while not got.endswith(b"\n"):
        chunk = client.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


VERSIONS = ["TLS1.3", "TLS1.2"]


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["software", "card"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("alg", list(KEYS))
def test_mutual_tls_with_openssl_s_server(pki: Pki, alg: str, version: str, kind: str) -> None:
    inner, chain = signer_for(pki, alg, kind)
    signer = Recording(inner)
    with s_server(pki, version) as server:
        client = connect(
            "127.0.0.1", server.port, signer, chain, [pki.ca.cert], versions=(version,)
        )
        assert client.version == version
        assert echo(client, b"hello from the device") == b"ecived eht morf olleh\n"
        client.close()
        out = server.output()
    assert signer.calls == [EXPECTED[alg]]  # exactly one CertificateVerify, made by the signer
    assert f"Peer certificate: CN = device-{alg}" in out
    assert "Verification: OK" in out
    assert f"Protocol version: {version.replace('TLS', 'TLSv')}" in out
    assert "Signature type: " + ("ECDSA" if alg != "rsa2048" else "RSA-PSS") in out


@pytest.mark.parametrize("kind", ["software", "card"])
def test_tls12_rsa_pkcs1_when_the_server_allows_only_pkcs1(pki: Pki, kind: str) -> None:
    inner, chain = signer_for(pki, "rsa2048", kind)
    signer = Recording(inner)
    with s_server(pki, "TLS1.2", "-client_sigalgs", "RSA+SHA256") as server:
        client = connect(
            "127.0.0.1",
            server.port,
            signer,
            chain,
            [pki.ca.cert],
            versions=("TLS1.2",),
        )
        assert echo(client, b"pkcs1") == b"1sckp\n"
        client.close()
        out = server.output()
    assert signer.calls == [("sha256", "pkcs1")]  # DigestInfo stripped, bare digest to the SE
    assert "Signature type: RSA" in out
    assert "Verification: OK" in out


@pytest.mark.parametrize("version", VERSIONS)
def test_client_certificate_from_another_ca_is_refused(pki: Pki, version: str) -> None:
    key = pki.keys["p256"]
    foreign = pki.rogue.client("device-foreign", key.public_key())
    with s_server(pki, version) as server:
        # In TLS 1.3 the client's handshake ends before the server has judged the certificate:
        # the refusal then arrives as an alert on the first read.
        with pytest.raises((TlsError, OSError)):  # an alert, or the reset that follows it
            client = connect(
                "127.0.0.1",
                server.port,
                SoftwareSigner(key),
                [foreign],
                [pki.ca.cert],
                versions=(version,),
            )
            echo(client, b"must not come back")
        out = server.output()
    assert "Verification: OK" not in out
    assert "verify error" in out or "certificate verify failed" in out
    assert "kcab emoc ton tsum" not in out


@pytest.mark.parametrize("version", VERSIONS)
def test_server_certificate_from_another_ca_fails_closed(pki: Pki, version: str) -> None:
    signer = Recording(SoftwareSigner(pki.keys["p256"]))
    with s_server(pki, version, cert="rogue-server") as server:
        with pytest.raises(TlsVerificationError):
            connect(
                "127.0.0.1",
                server.port,
                signer,
                [pki.client_certs["p256"]],
                [pki.ca.cert],
                versions=(version,),
            )
        out = server.output()
    assert "ACCEPT" in out  # s_server ran and has exited: our side closed the connection


@pytest.mark.parametrize("version", VERSIONS)
def test_server_certificate_for_another_name_fails_closed(pki: Pki, version: str) -> None:
    with s_server(pki, version) as server:
        with pytest.raises(TlsVerificationError, match="rejected"):
            connect(
                "127.0.0.1",
                server.port,
                SoftwareSigner(pki.keys["p384"]),
                [pki.client_certs["p384"]],
                [pki.ca.cert],
                server_name="fleet.example.com",
                versions=(version,),
            )
        server.output()

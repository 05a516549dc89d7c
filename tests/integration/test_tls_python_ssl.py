"""Interop: the tlslite-ng key adapter (``iotid.host.tls``) against a Python ``ssl`` server.

The server (stdlib ``ssl``, i.e. OpenSSL through CPython, ``CERT_REQUIRED`` against our CA)
runs in a thread. Client keys P-256, P-384 and RSA-2048, TLS 1.3 and 1.2, signed by a software
signer and by the mTLS applet on an emulated card: the handshake completes and the server sees
the client certificate's subject. Also: ``http.client`` over :class:`TlsClient`, failing closed
on a foreign server certificate, a bad or refused signature from the signer, a truncated stream,
argument checks, and the optional ``cryptography`` backend for AES-GCM and X25519.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tlslite import keyexchange, recordlayer  # type: ignore[import-untyped]

from iotid.host.mtls import MtlsSession, SchemeNotAllowedError, perso_dgis
from iotid.host.protocol import SmartCardProtocol
from iotid.host.securitydomain import SecurityDomainSession
from iotid.host.tls import (
    DigestSigner,
    SeEcdsaKey,
    SeRsaKey,
    TlsClient,
    TlsError,
    TlsHandshakeError,
    TlsVerificationError,
    connect,
    enable_cryptography_backend,
    tls_key,
)
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.mtls import MtlsApplet
from iotid.se.identity import IdentityStore
from iotid.spec import mtls
from iotid.transport.loopback import LoopbackConnection

pytestmark = pytest.mark.slow

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}
TIMEOUT = 20.0


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

    def server(self, curve: ec.EllipticCurve | None = None) -> tuple[x509.Certificate, PrivateKey]:
        key = ec.generate_private_key(curve or ec.SECP256R1())
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


def card_signer(
    key: PrivateKey, client_cert: x509.Certificate, schemes: set[str] | None = None
) -> MtlsSession:
    """A card with the mTLS applet personalised (``schemes`` allowed), ``key`` as its identity
    key and the client certificate stored; the session reaches it over the loopback."""
    card = Card.create(None, uid=bytes(range(10)), applets=[MtlsApplet])
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(mtls.AID)
    sd.store_data(perso_dgis(schemes))
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
VERSIONS = ["TLS1.3", "TLS1.2"]


@dataclass
class Pki:
    dir: Path
    ca: Authority
    rogue: Authority
    keys: dict[str, PrivateKey]
    client_certs: dict[str, x509.Certificate]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("tls-python-ssl")
    ca, rogue = Authority.make("iotid test fleet CA"), Authority.make("rogue CA")
    write_pem(d / "ca.pem", ca.cert)
    servers = (
        ("server", ca, None),
        ("rogue-server", rogue, None),
        ("server-p384", ca, ec.SECP384R1()),
    )
    for name, authority, curve in servers:
        cert, key = authority.server(curve)
        write_pem(d / f"{name}.pem", cert)
        write_pem(d / f"{name}.key", key)
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


# -- the Python ssl server ----------------------------------------------------------------------
Handler = Callable[[ssl.SSLSocket, dict[str, Any]], None]


def echo_reversed(tls: ssl.SSLSocket, result: dict[str, Any]) -> None:
    data = b""
    while not data.endswith(b"\n"):
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    result["data"] = data
    tls.sendall(data[:-1][::-1] + b"\n")
    tls.unwrap()  # close_notify, then the client's


@dataclass
class Server:
    port: int
    result: dict[str, Any] = field(default_factory=dict)


@contextmanager
def ssl_server(
    pki: Pki, version: str, handler: Handler = echo_reversed, cert: str = "server"
) -> Iterator[Server]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.dir / f"{cert}.pem", pki.dir / f"{cert}.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(pki.dir / "ca.pem")
    tls_version = ssl.TLSVersion.TLSv1_3 if version == "TLS1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ctx.maximum_version = tls_version
    listener = socket.create_server(("127.0.0.1", 0))  # port 0: a free port
    listener.settimeout(TIMEOUT)
    server = Server(listener.getsockname()[1])

    def run() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                peer: Any = tls.getpeercert()
                server.result["subject"] = {k: v for ((k, v),) in peer["subject"]}
                server.result["version"] = tls.version()
                handler(tls, server.result)
        except (OSError, ssl.SSLError) as exc:
            server.result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert not thread.is_alive(), "the server thread did not finish"


def line_echo(client: TlsClient, text: bytes) -> bytes:
    client.sendall(text + b"\n")
    got = b""
    while not got.endswith(b"\n"):
        chunk = client.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["software", "card"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("alg", list(KEYS))
def test_mutual_tls_with_python_ssl_server(pki: Pki, alg: str, version: str, kind: str) -> None:
    inner, chain = signer_for(pki, alg, kind)
    signer = Recording(inner)
    with ssl_server(pki, version) as server:
        client = connect(
            "localhost", server.port, signer, chain, [pki.ca.cert], versions=(version,)
        )
        assert client.version == version
        assert client.server_certificate.subject == x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]
        )
        assert line_echo(client, b"ping") == b"gnip\n"
        assert client.read_all() == b""  # the server's close_notify ends the stream
        client.close()
    assert "error" not in server.result
    assert server.result["subject"] == {"commonName": f"device-{alg}"}
    assert server.result["version"] == version.replace("TLS", "TLSv")
    assert signer.calls == [EXPECTED[alg]]


def test_http_client_runs_over_the_tls_client(pki: Pki) -> None:
    def http_handler(tls: ssl.SSLSocket, result: dict[str, Any]) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = tls.recv(4096)
            if not chunk:
                break
            request += chunk
        result["request"] = request
        body = f"hello {result['subject']['commonName']}".encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        tls.sendall(head.encode() + body)
        tls.unwrap()

    inner, chain = signer_for(pki, "p256", "card")
    with ssl_server(pki, "TLS1.3", http_handler) as server:
        client = connect("127.0.0.1", server.port, inner, chain, [pki.ca.cert])
        web = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        web.sock = client
        web.request("GET", "/whoami")
        response = web.getresponse()
        assert response.status == 200
        assert response.read() == b"hello device-p256"
        web.close()
        client.close()
    assert server.result["request"].startswith(b"GET /whoami HTTP/1.1\r\n")


@pytest.mark.parametrize("version", VERSIONS)
def test_foreign_server_certificate_fails_closed_before_any_data(pki: Pki, version: str) -> None:
    def expect_nothing(tls: ssl.SSLSocket, result: dict[str, Any]) -> None:
        try:
            result["data"] = tls.recv(4096)
        except (OSError, ssl.SSLError) as exc:
            result["data"] = b""
            result["recv_error"] = exc

    signer = Recording(SoftwareSigner(pki.keys["p256"]))
    rogue = ssl_server(pki, version, expect_nothing, cert="rogue-server")
    with rogue as server, pytest.raises(TlsVerificationError, match="rejected"):
        connect(
            "127.0.0.1",
            server.port,
            signer,
            [pki.client_certs["p256"]],
            [pki.ca.cert],
            versions=(version,),
        )
    assert server.result.get("data", b"") == b""  # the server never received application data


def test_bad_signature_from_the_signer_aborts_the_handshake(pki: Pki) -> None:
    class Forger(SoftwareSigner):
        def sign_digest(self, digest: bytes, hash_name: str, scheme: str) -> bytes:
            return super().sign_digest(bytes(len(digest)), hash_name, scheme)

    with ssl_server(pki, "TLS1.3") as server, pytest.raises(TlsHandshakeError):
        connect(
            "127.0.0.1",
            server.port,
            Forger(pki.keys["p256"]),
            [pki.client_certs["p256"]],
            [pki.ca.cert],
        )
    assert "error" in server.result  # tlslite re-verified, refused, and sent an alert
    assert "data" not in server.result


def test_card_refusing_the_scheme_becomes_a_handshake_error(pki: Pki) -> None:
    """A card personalised for PKCS#1 v1.5 only cannot sign TLS 1.3 (RSA-PSS only): 6A86."""
    key, cert = pki.keys["rsa2048"], pki.client_certs["rsa2048"]
    session = card_signer(key, cert, schemes={"rsa-pkcs1-sha256"})
    with ssl_server(pki, "TLS1.3") as server, pytest.raises(TlsHandshakeError) as info:
        connect("127.0.0.1", server.port, session, [cert], [pki.ca.cert])
    assert isinstance(info.value.__cause__, SchemeNotAllowedError)
    assert "data" not in server.result


def test_truncated_stream_is_an_error_not_an_eof(pki: Pki) -> None:
    def cut(tls: ssl.SSLSocket, result: dict[str, Any]) -> None:
        tls.sendall(b"partial")
        tls.shutdown(socket.SHUT_RDWR)  # TCP shutdown without a close_notify alert

    with ssl_server(pki, "TLS1.3", cut) as server:
        client = connect(
            "127.0.0.1",
            server.port,
            SoftwareSigner(pki.keys["p256"]),
            [pki.client_certs["p256"]],
            [pki.ca.cert],
        )
        with pytest.raises(TlsError, match="read failed"):
            client.read_all()
        client.close()
    assert server.result["subject"] == {"commonName": "device-p256"}


def test_argument_errors_are_raised_before_connecting(pki: Pki) -> None:
    signer = SoftwareSigner(pki.keys["p256"])
    cert, ca = pki.client_certs["p256"], [pki.ca.cert]
    port = 9  # nothing is ever sent: each check fails first
    with pytest.raises(ValueError, match="not for the signer"):
        connect("127.0.0.1", port, signer, [pki.client_certs["p384"]], ca)
    with pytest.raises(ValueError, match="no CA"):
        connect("127.0.0.1", port, signer, [cert], [])
    with pytest.raises(ValueError, match="empty"):
        connect("127.0.0.1", port, signer, [], ca)
    with pytest.raises(ValueError, match="unknown TLS version"):
        connect("127.0.0.1", port, signer, [cert], ca, versions=("TLS1.1",))


@pytest.mark.parametrize("version", VERSIONS)
def test_cryptography_backend_for_aes_gcm_and_x25519(
    pki: Pki, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # monkeypatch restores tlslite's own functions after the test
    monkeypatch.setattr(recordlayer, "createAESGCM", recordlayer.createAESGCM)
    monkeypatch.setattr(keyexchange, "x25519", keyexchange.x25519)
    enable_cryptography_backend()
    enable_cryptography_backend()  # idempotent
    inner, chain = signer_for(pki, "p384", "card")
    with ssl_server(pki, version) as server:
        client = connect("127.0.0.1", server.port, inner, chain, [pki.ca.cert], versions=(version,))
        assert client.cipher_implementation == "cryptography"
        assert client.cipher in ("aes128gcm", "aes256gcm")
        assert line_echo(client, b"fast path") == b"htap tsaf\n"
        client.close()
    assert server.result["subject"] == {"commonName": "device-p384"}


@pytest.mark.parametrize("version", VERSIONS)
def test_p256_client_with_a_p384_server(pki: Pki, version: str) -> None:
    """The curve's hash comes first in the offered list (the TLS 1.2 CertificateVerify picks it)
    but is not the only one: a P-384 server must sign with SHA-384 in TLS 1.3."""
    inner, chain = signer_for(pki, "p256", "card")
    signer = Recording(inner)
    with ssl_server(pki, version, cert="server-p384") as server:
        client = connect(
            "localhost", server.port, signer, chain, [pki.ca.cert], versions=(version,)
        )
        assert isinstance(client.server_certificate.public_key(), ec.EllipticCurvePublicKey)
        assert line_echo(client, b"mixed curves") == b"sevruc dexim\n"
        client.close()
    assert signer.calls == [("sha256", "ecdsa")]
    assert server.result["subject"] == {"commonName": "device-p256"}


def test_adapter_refuses_what_the_se_does_not_sign(pki: Pki) -> None:
    """No network: the key objects as tlslite calls them, for inputs outside the SE's schemes."""
    rsa_key = tls_key(Recording(SoftwareSigner(pki.keys["rsa2048"])))
    ec_key = tls_key(Recording(SoftwareSigner(pki.keys["p256"])))
    assert isinstance(rsa_key, SeRsaKey)
    assert isinstance(ec_key, SeEcdsaKey)
    sha1_info = bytes.fromhex("3021300906052b0e03021a05000414") + bytes(20)
    with pytest.raises(TlsHandshakeError, match="DigestInfo"):
        rsa_key.sign(bytearray(sha1_info), "pkcs1", None, 0)
    with pytest.raises(TlsHandshakeError, match="sha512"):
        rsa_key.sign(bytearray(64), "pss", "sha512", 64)
    with pytest.raises(TlsHandshakeError, match="wrong length"):
        ec_key.sign(bytearray(32), None, "sha384")  # a SHA-384 digest cut to P-256's 32 bytes
    # the accepted path, checked the way tlslite checks it (its own verify, public key only)
    digest = bytes(range(32))
    info = bytes.fromhex("3031300d060960864801650304020105000420") + digest
    signature = rsa_key.sign(bytearray(info), "pkcs1", None, 0)
    assert rsa_key.verify(signature, bytearray(info), "pkcs1", None, 0)
    assert ec_key.verify(ec_key.sign(bytearray(digest), None, "sha256"), bytearray(digest))
    assert not ec_key.verify(ec_key.sign(bytearray(digest), None, "sha256"), bytearray(32))
    assert "SE" in repr(ec_key) and "SE" in repr(rsa_key)
    assert ec_key.private_key.curve.baselen == 32  # the stand-in tlslite's TLS 1.2 path reads

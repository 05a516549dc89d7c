"""Interop: the tlslite-ng key adapter (``iotid.host.tls``) against a Python ``ssl`` server.

The server (stdlib ``ssl``, i.e. OpenSSL through CPython, ``CERT_REQUIRED`` against our CA)
runs in a thread. Client keys P-256, P-384 and RSA-2048, TLS 1.3 and 1.2, signed by a software
signer and by the mTLS applet on an emulated card: the handshake completes and the server sees
the client certificate's subject. Also: ``http.client`` over :class:`TlsClient`, failing closed
on a foreign server certificate, a bad or refused signature from the signer, a truncated stream,
argument checks, and the optional ``cryptography`` backend for AES-GCM and X25519.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tlslite import keyexchange, recordlayer  # type: ignore[import-untyped]

from iotid.host.mtls import SchemeNotAllowedError
from iotid.host.tls import (
    SeEcdsaKey,
    SeRsaKey,
    TlsError,
    TlsHandshakeError,
    TlsVerificationError,
    connect,
    enable_cryptography_backend,
    tls_key,
)
from iotid.spec.algorithms import KeyAlg
from support.tls import (
    EXPECTED,
    KEYS,
    VERSIONS,
    Recording,
    SoftwareSigner,
    TlsPki,
    card_signer,
    line_echo,
)

pytestmark = pytest.mark.slow

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsPki:
    pki = TlsPki.create(tmp_path_factory.mktemp("tls-python-ssl"))
    pki.write_server("server-p384", pki.ca, KeyAlg.EC_P384)
    return pki


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
    pki: TlsPki, version: str, handler: Handler = echo_reversed, cert: str = "server"
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


# -- tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["software", "card"])
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("alg", list(KEYS))
def test_mutual_tls_with_python_ssl_server(pki: TlsPki, alg: str, version: str, kind: str) -> None:
    inner, chain = pki.signer_for(alg, kind)
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


def test_http_client_runs_over_the_tls_client(pki: TlsPki) -> None:
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

    inner, chain = pki.signer_for("p256", "card")
    with ssl_server(pki, "TLS1.3", http_handler) as server:
        client = connect("127.0.0.1", server.port, inner, chain, [pki.ca.cert])
        web = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        web.sock = client
        web.request("GET", "/whoami")
        # fileno() is the TCP socket's, so select() can wait for the answer.
        readable, _, _ = select.select([client], [], [], TIMEOUT)
        assert readable == [client]
        response = web.getresponse()
        assert response.status == 200
        assert response.read() == b"hello device-p256"
        web.close()
        client.close()
    assert server.result["request"].startswith(b"GET /whoami HTTP/1.1\r\n")


@pytest.mark.parametrize("version", VERSIONS)
def test_foreign_server_certificate_fails_closed_before_any_data(pki: TlsPki, version: str) -> None:
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


def test_bad_signature_from_the_signer_aborts_the_handshake(pki: TlsPki) -> None:
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


def test_card_refusing_the_scheme_becomes_a_handshake_error(pki: TlsPki) -> None:
    """A card personalised for PKCS#1 v1.5 only cannot sign TLS 1.3 (RSA-PSS only): 6A86."""
    key, cert = pki.keys["rsa2048"], pki.client_certs["rsa2048"]
    session = card_signer(key, cert, schemes={"rsa-pkcs1-sha256"})
    with ssl_server(pki, "TLS1.3") as server, pytest.raises(TlsHandshakeError) as info:
        connect("127.0.0.1", server.port, session, [cert], [pki.ca.cert])
    assert isinstance(info.value.__cause__, SchemeNotAllowedError)
    assert "data" not in server.result


def test_truncated_stream_is_an_error_not_an_eof(pki: TlsPki) -> None:
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


def test_argument_errors_are_raised_before_connecting(pki: TlsPki) -> None:
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
    pki: TlsPki, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # monkeypatch restores tlslite's own functions after the test
    monkeypatch.setattr(recordlayer, "createAESGCM", recordlayer.createAESGCM)
    monkeypatch.setattr(keyexchange, "x25519", keyexchange.x25519)
    enable_cryptography_backend()
    enable_cryptography_backend()  # idempotent
    inner, chain = pki.signer_for("p384", "card")
    with ssl_server(pki, version) as server:
        client = connect("127.0.0.1", server.port, inner, chain, [pki.ca.cert], versions=(version,))
        assert client.cipher_implementation == "cryptography"
        assert client.cipher in ("aes128gcm", "aes256gcm")
        assert line_echo(client, b"fast path") == b"htap tsaf\n"
        client.close()
    assert server.result["subject"] == {"commonName": "device-p384"}


@pytest.mark.parametrize("version", VERSIONS)
def test_p256_client_with_a_p384_server(pki: TlsPki, version: str) -> None:
    """The curve's hash comes first in the offered list (the TLS 1.2 CertificateVerify picks it)
    but is not the only one: a P-384 server must sign with SHA-384 in TLS 1.3."""
    inner, chain = pki.signer_for("p256", "card")
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


def test_adapter_refuses_what_the_se_does_not_sign(pki: TlsPki) -> None:
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

"""Mutual TLS 1.3 / 1.2 from the device with the private key in the SE.

Scope: :func:`connect`, which opens a TCP connection, runs the client handshake with client
authentication, then validates the server's chain with ``cryptography.x509.verification``
against the caller's CA certificates and fails closed; :func:`handshake_settings` (the tlslite
settings for such a client); :func:`verify_server_chain`; and :class:`TlsClient`, a small
socket-like / file-like wrapper so that HTTP or MQTT clients can run over the connection
(tlslite's ``TLSConnection`` is not a real socket). Facts relied upon are in DESIGN.md §7.
This module is also the public entry point: it re-exports the key adapters and error types of
:mod:`iotid.host.tls_keys` and :func:`~iotid.host.tls_backend.enable_cryptography_backend`.

Not in scope: the tlslite key objects that hand signatures to the SE (:mod:`iotid.host.tls_keys`),
the optional ``cryptography`` backend for tlslite (:mod:`iotid.host.tls_backend`), the TLS
protocol itself (tlslite-ng), the signatures (the SE; tlslite re-verifies each one with the
public key right after it is made), certificate issuance, revocation checking (OCSP/CRL: the
fleet gateway's side), session resumption, server-side TLS, asyncio.

Caveat: tlslite reports the server's certificate only once the handshake is over, so in TLS 1.3
the client certificate has already been sent (encrypted) when the chain is checked; no
application data is ever sent or returned before the check passes.
"""

from __future__ import annotations

import io
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from tlslite.api import (  # type: ignore[import-untyped]
    X509,
    HandshakeSettings,
    TLSConnection,
    X509CertChain,
)
from tlslite.errors import TLSError  # type: ignore[import-untyped]

from iotid.host.tls_backend import enable_cryptography_backend
from iotid.host.tls_keys import (
    DigestSigner,
    PublicKey,
    SeEcdsaKey,
    SeRsaKey,
    TlsError,
    TlsHandshakeError,
    TlsVerificationError,
    tls_key,
)

__all__ = [
    "VERSIONS",
    "DigestSigner",
    "PublicKey",
    "SeEcdsaKey",
    "SeRsaKey",
    "TlsClient",
    "TlsError",
    "TlsHandshakeError",
    "TlsVerificationError",
    "connect",
    "enable_cryptography_backend",
    "handshake_settings",
    "tls_key",
    "verify_server_chain",
]

#: Protocol names accepted by :func:`connect` -> tlslite's (major, minor) wire version.
VERSIONS: dict[str, tuple[int, int]] = {"TLS1.3": (3, 4), "TLS1.2": (3, 3)}


def handshake_settings(
    key: SeEcdsaKey | SeRsaKey, versions: Sequence[str] = ("TLS1.3", "TLS1.2")
) -> HandshakeSettings:
    """tlslite settings for a client with ``key``: only TLS 1.3/1.2, AEAD suites, ECDHE."""
    wanted = sorted({_version(v) for v in versions}, reverse=True)
    if not wanted:
        raise ValueError("no TLS version requested")
    s = HandshakeSettings()
    s.versions = wanted
    s.minVersion, s.maxVersion = wanted[-1], wanted[0]
    # DESIGN.md §7: with compression tlslite's TLS 1.3 client Certificate fails against OpenSSL.
    s.certificate_compression_send = []
    s.cipherNames = ["aes128gcm", "aes256gcm", "chacha20-poly1305"]
    s.keyExchangeNames = ["ecdhe_ecdsa", "ecdhe_rsa"]
    s.eccCurves = ["x25519", "secp256r1", "secp384r1"]
    s.keyShares = ["x25519"]  # one share: a second would cost a key generation per handshake
    s.use_heartbeat_extension = False
    # The client's list order decides the TLS 1.2 CertificateVerify hash (getFirstMatching);
    # tlslite would otherwise prefer SHA-512, which the SE does not sign with (DESIGN.md §7).
    # The curve's hash comes first; the rest are still offered for the server's own signature.
    first = key.hash_name if isinstance(key, SeEcdsaKey) else "sha256"
    s.ecdsaSigHashes = [first] + [h for h in ("sha256", "sha384", "sha512") if h != first]
    s.rsaSchemes = ["pss", "pkcs1"]
    s.rsaSigHashes = ["sha256", "sha384", "sha512"]
    return s


def _version(name: str) -> tuple[int, int]:
    try:
        return VERSIONS[name]
    except KeyError:
        raise ValueError(f"unknown TLS version {name!r} (use {sorted(VERSIONS)})") from None


def _tlslite_chain(chain: Sequence[x509.Certificate]) -> Any:
    parsed = []
    for cert in chain:
        item = X509()
        item.parseBinary(bytearray(cert.public_bytes(serialization.Encoding.DER)))
        parsed.append(item)
    return X509CertChain(parsed)


def verify_server_chain(
    chain_der: Sequence[bytes], ca: Sequence[x509.Certificate], server_name: str
) -> x509.Certificate:
    """Validate the server's chain (leaf first) for ``server_name``; return the leaf.

    RFC 5280 path validation and RFC 6125 name matching by ``cryptography.x509.verification``
    (CA/B Forum-style profile). Any problem raises :class:`TlsVerificationError`.
    """
    if not chain_der:
        raise TlsVerificationError("the server sent no certificate")
    try:
        certs = [x509.load_der_x509_certificate(der) for der in chain_der]
        subject = _subject(server_name)
        verifier = PolicyBuilder().store(Store(list(ca))).build_server_verifier(subject)
        verifier.verify(certs[0], certs[1:])
    except (VerificationError, ValueError) as exc:
        raise TlsVerificationError(f"server certificate rejected: {exc}") from exc
    return certs[0]


def _subject(server_name: str) -> DNSName | IPAddress:
    try:
        return IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        return DNSName(server_name)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def connect(
    host: str,
    port: int,
    signer: DigestSigner,
    client_chain: list[x509.Certificate],
    ca: list[x509.Certificate],
    *,
    server_name: str | None = None,
    versions: Iterable[str] = ("TLS1.3", "TLS1.2"),
    timeout: float = 10,
) -> TlsClient:
    """Mutual TLS to ``host:port`` with the SE-held key; the server chain checked against ``ca``.

    ``client_chain`` is the client certificate (for ``signer``'s key) then its intermediates.
    ``server_name`` (default ``host``) is sent as SNI when it is a DNS name and is what the
    server certificate must name. Raises ``ValueError`` for bad arguments,
    :class:`TlsHandshakeError` and :class:`TlsVerificationError` (after closing the socket).
    In TLS 1.3 the client's handshake ends before the server has judged the client
    certificate, so a refusal by the server surfaces on the first read.
    """
    if not client_chain:
        raise ValueError("client_chain is empty")
    if not ca:
        raise ValueError("no CA certificate to validate the server with")
    pub = signer.public_key()  # one round trip to the SE
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if client_chain[0].public_key().public_bytes(der, spki) != pub.public_bytes(der, spki):
        raise ValueError("the client certificate is not for the signer's key")
    key = tls_key(signer, pub)
    settings = handshake_settings(key, tuple(versions))
    name = server_name or host
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise TlsHandshakeError(f"cannot reach {host}:{port}: {exc}") from exc
    conn = TLSConnection(sock)
    try:
        conn.handshakeClientCert(
            _tlslite_chain(client_chain),
            key,
            settings=settings,
            serverName=None if _is_ip(name) else name,
        )
        if conn.version not in settings.versions:
            raise TlsHandshakeError(f"server negotiated {conn.getVersionName()}")
        chain = [bytes(c.bytes) for c in conn.session.serverCertChain.x509List]
        leaf = verify_server_chain(chain, ca, name)
    except BaseException as exc:
        sock.close()  # fail closed: nothing more goes out on this connection
        if isinstance(exc, TlsError) or not isinstance(exc, Exception):
            raise
        # tlslite alerts, socket errors, the SE's errors: one type for the caller
        raise TlsHandshakeError(f"TLS handshake with {host}:{port} failed: {exc!r}") from exc
    return TlsClient(conn, leaf)


class TlsClient:
    """An established, verified client connection: socket-like and file-like enough for
    ``http.client`` (set ``HTTPConnection.sock``) or an MQTT client's socket hook.

    ``fileno()`` is the TCP socket's, for ``select``; bytes already decrypted and buffered are
    counted by :meth:`pending` (check it before waiting, as with ``ssl.SSLSocket``). As with a
    socket, I/O raises ``OSError`` when the TCP connection fails and :class:`TlsError` for a
    TLS failure (an alert, a bad record, a stream cut without close_notify).
    """

    def __init__(self, conn: Any, server_certificate: x509.Certificate) -> None:
        self._conn = conn
        self.server_certificate = server_certificate
        #: "TLS1.3" or "TLS1.2".
        self.version: str = str(conn.getVersionName()).replace(" ", "")
        #: tlslite's cipher name ("aes128gcm", ...) and its implementation ("python", ...).
        self.cipher: str = str(conn.getCipherName())
        self.cipher_implementation: str = str(conn.getCipherImplementation())

    def __repr__(self) -> str:
        return f"TlsClient({self.version}, {self.cipher}, closed={self.closed})"

    @property
    def closed(self) -> bool:
        return bool(self._conn.closed)

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        try:
            self._conn.write(bytearray(data))
        except TLSError as exc:
            raise TlsError(f"TLS write failed: {exc!r}") from exc

    def recv(self, max_bytes: int = 16384) -> bytes:
        """Up to ``max_bytes`` bytes; ``b""`` once the peer has closed."""
        try:
            return bytes(self._conn.read(max_bytes))
        except TLSError as exc:
            raise TlsError(f"TLS read failed: {exc!r}") from exc

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        data = self.recv(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read_all(self) -> bytes:
        """Everything until the peer's close_notify. A stream cut without one raises
        :class:`TlsError` (it may have been truncated); a silent peer hits the timeout."""
        parts = []
        while chunk := self.recv():
            parts.append(chunk)
        return b"".join(parts)

    def pending(self) -> int:
        """Decrypted bytes buffered inside tlslite (readable without touching the socket)."""
        return len(self._conn._readBuffer)

    def makefile(self, mode: str = "rb", buffering: int = -1) -> io.BufferedIOBase:
        """A buffered binary file over the connection ("rb" or "wb"); closing it leaves the
        connection open."""
        raw = _RawTls(self, mode)
        size = io.DEFAULT_BUFFER_SIZE if buffering <= 0 else buffering
        if mode == "rb":
            return io.BufferedReader(raw, size)
        if mode == "wb":
            return io.BufferedWriter(raw, size)
        raise ValueError("mode must be 'rb' or 'wb'")

    def settimeout(self, value: float | None) -> None:
        self._conn.sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._conn.sock.gettimeout()  # type: ignore[no-any-return]

    def setblocking(self, flag: bool) -> None:
        if not flag:
            raise ValueError("tlslite connections are blocking (use settimeout)")
        self.settimeout(None)

    def fileno(self) -> int:
        # tlslite may wrap the socket in a BufferedSocket (no fileno of its own).
        sock = self._conn.sock
        return int(getattr(sock, "socket", sock).fileno())

    def getpeername(self) -> Any:
        return self._conn.sock.getpeername()

    def shutdown(self, how: int) -> None:
        self._conn.sock.shutdown(how)

    def close(self) -> None:
        """Send close_notify and close the socket (never raises for an already dead peer)."""
        try:
            self._conn.close()
        except (TLSError, OSError):
            self._conn.sock.close()

    def __enter__(self) -> TlsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RawTls(io.RawIOBase):
    def __init__(self, client: TlsClient, mode: str) -> None:
        self._client = client
        self._mode = mode

    def readable(self) -> bool:
        return self._mode == "rb"

    def writable(self) -> bool:
        return self._mode == "wb"

    def readinto(self, buffer: Any) -> int:
        return self._client.recv_into(memoryview(buffer).cast("B"))

    def write(self, data: Any) -> int:
        return self._client.send(bytes(data))

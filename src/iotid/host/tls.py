"""TLS key adapter: mutual TLS 1.3 / 1.2 from the device with the private key in the SE.

Scope: key objects for tlslite-ng 0.8.2 that hold only the public key and hand every
CertificateVerify signature to a :class:`DigestSigner` (the mTLS applet's session, or any object
with the same two methods); :func:`connect`, which opens a TCP connection, runs the client
handshake with client authentication, then validates the server's chain with
``cryptography.x509.verification`` against the caller's CA certificates and fails closed; and
:class:`TlsClient`, a small socket-like / file-like wrapper so that HTTP or MQTT clients can run
over the connection (tlslite's ``TLSConnection`` is not a real socket). Facts relied upon are in
DESIGN.md §7.

Not in scope: the TLS protocol itself (tlslite-ng), the signatures (the SE; tlslite re-verifies
each one with the public key right after it is made), certificate issuance, revocation checking
(OCSP/CRL: the fleet gateway's side), session resumption, server-side TLS, asyncio.

Caveat: tlslite reports the server's certificate only once the handshake is over, so in TLS 1.3
the client certificate has already been sent (encrypted) when the chain is checked; no
application data is ever sent or returned before the check passes.
"""

from __future__ import annotations

import io
import ipaddress
import os
import socket
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from tlslite import keyexchange, recordlayer  # type: ignore[import-untyped]
from tlslite.api import (  # type: ignore[import-untyped]
    X509,
    HandshakeSettings,
    TLSConnection,
    X509CertChain,
)
from tlslite.errors import TLSError  # type: ignore[import-untyped]
from tlslite.utils import python_aesgcm  # type: ignore[import-untyped]
from tlslite.utils import x25519 as tl_x25519
from tlslite.utils.python_ecdsakey import Python_ECDSAKey  # type: ignore[import-untyped]
from tlslite.utils.python_rsakey import Python_RSAKey  # type: ignore[import-untyped]

from iotid.host.errors import HostError

__all__ = [
    "VERSIONS",
    "DigestSigner",
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
_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}
#: cryptography curve name -> (python-ecdsa curve name, the hash bound to it: RFC 8446 §4.2.3).
_CURVES = {"secp256r1": ("NIST256p", "sha256"), "secp384r1": ("NIST384p", "sha384")}
#: RFC 8017 §9.2 note 1: DER of DigestInfo up to the digest, for the hashes the SE signs with.
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
}


PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class TlsError(HostError):
    """A TLS connection could not be set up or used."""


class TlsHandshakeError(TlsError):
    """The handshake failed (peer alert, protocol error, refused signature, bus error)."""


class TlsVerificationError(TlsError):
    """The server's certificate chain did not validate; the connection has been closed."""


@runtime_checkable
class DigestSigner(Protocol):
    """What the adapter needs from the SE: the identity public key and digest signatures.

    ``hash_name`` is "sha256" or "sha384"; ``scheme`` is "ecdsa" (returns DER), "pss" (salt
    length = digest length, MGF1 with the same hash) or "pkcs1" (RSASSA-PKCS1-v1_5: the signer
    builds the DigestInfo and the padding itself).
    """

    def public_key(self) -> PublicKey: ...

    def sign_digest(self, digest: bytes, hash_name: str, scheme: str) -> bytes: ...


def _check_digest(digest: bytes, hash_name: str) -> None:
    algo = _HASHES.get(hash_name)
    if algo is None:
        raise TlsHandshakeError(f"the peer asked for a {hash_name} signature; SE signs sha256/384")
    if len(digest) != algo.digest_size:
        raise TlsHandshakeError(f"{hash_name} digest of the wrong length ({len(digest)} bytes)")


class _CurveOnly:
    """Stand-in for tlslite's ``private_key``: its TLS 1.2 path reads ``.curve.baselen``."""

    def __init__(self, curve: Any) -> None:
        self.curve = curve

    def __repr__(self) -> str:
        return "<private key held by the secure element>"


class SeEcdsaKey(Python_ECDSAKey):  # type: ignore[misc]
    """ECDSA key for tlslite whose private half stays in the SE (DESIGN.md §7)."""

    def __init__(self, signer: DigestSigner, public_key: PublicKey | None = None) -> None:
        pub = public_key if public_key is not None else signer.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name not in _CURVES:
            raise ValueError("SeEcdsaKey needs a P-256 or P-384 public key")
        numbers = pub.public_numbers()
        curve_name, self.hash_name = _CURVES[pub.curve.name]
        super().__init__(numbers.x, numbers.y, curve_name)
        self.signer = signer
        self._pub = pub
        self.private_key = _CurveOnly(self.public_key.curve)

    def __repr__(self) -> str:
        return f"SeEcdsaKey({self.curve_name}, private key in the SE)"

    def hasPrivateKey(self) -> bool:  # noqa: N802 - tlslite's API
        return True

    def _verify(self, signature: bytes | bytearray, hash_bytes: bytes | bytearray) -> bool:
        # tlslite re-checks each signature right after _sign: do it with cryptography, not
        # python-ecdsa (same answer, ~50x faster). The digest always has the curve hash's size.
        algo = _HASHES[self.hash_name]
        if len(hash_bytes) != algo.digest_size:
            return bool(super()._verify(signature, hash_bytes))
        try:
            self._pub.verify(bytes(signature), bytes(hash_bytes), ec.ECDSA(Prehashed(algo)))
        except InvalidSignature:
            return False
        return True

    def _sign(self, data: bytes | bytearray, hAlg: str) -> bytearray:  # noqa: N803
        digest = bytes(data)
        _check_digest(digest, hAlg)
        return bytearray(self.signer.sign_digest(digest, hAlg, "ecdsa"))

    def _hashAndSign(self, data: bytes | bytearray, hAlg: str) -> bytearray:  # noqa: N802, N803
        algo = _HASHES.get(hAlg)
        if algo is None:
            raise TlsHandshakeError(f"the peer asked for a {hAlg} signature; SE signs sha256/384")
        h = hashes.Hash(algo)
        h.update(bytes(data))
        return self._sign(h.finalize(), hAlg)


class SeRsaKey(Python_RSAKey):  # type: ignore[misc]
    """RSA key for tlslite whose private half stays in the SE (DESIGN.md §7)."""

    def __init__(self, signer: DigestSigner, public_key: PublicKey | None = None) -> None:
        pub = public_key if public_key is not None else signer.public_key()
        if not isinstance(pub, rsa.RSAPublicKey):
            raise ValueError("SeRsaKey needs an RSA public key")
        numbers = pub.public_numbers()
        super().__init__(numbers.n, numbers.e)
        self.signer = signer

    def __repr__(self) -> str:
        return f"SeRsaKey({int(self.n).bit_length()} bits, private key in the SE)"

    def hasPrivateKey(self) -> bool:  # noqa: N802 - tlslite's API
        return True

    def sign(
        self,
        data: bytes | bytearray,
        padding: str = "pkcs1",
        hashAlg: str | None = None,  # noqa: N803
        saltLen: int | None = None,  # noqa: N803
    ) -> bytearray:
        data = bytes(data)
        padding = padding.lower()
        if padding == "pss":
            # TLS 1.3 / 1.2 rsa_pss_rsae_*: tlslite passes the digest (RFC 8446 §4.2.3).
            if hashAlg is None:
                raise TlsHandshakeError("PSS signature without a hash")
            _check_digest(data, hashAlg)
            if saltLen is not None and saltLen != len(data):
                raise TlsHandshakeError("PSS salt length must equal the digest length")
            sig = self.signer.sign_digest(data, hashAlg, "pss")
        elif padding == "pkcs1":
            digest, hash_name = _split_digest_info(data, hashAlg)
            sig = self.signer.sign_digest(digest, hash_name, "pkcs1")
        else:
            raise TlsHandshakeError(f"unsupported RSA padding {padding!r}")
        if len(sig) != (self.n.bit_length() + 7) // 8:
            raise TlsHandshakeError("the SE returned an RSA signature of the wrong length")
        return bytearray(sig)


def _split_digest_info(data: bytes, hash_name: str | None) -> tuple[bytes, str]:
    """PKCS#1 v1.5 input -> (digest, hash name).

    tlslite 0.8.2 hands TLS 1.2 CertificateVerify as DigestInfo || digest with no hash name
    (``KeyExchange.calcVerifyBytes`` already added the prefix); with a hash name it passes the
    bare digest.
    """
    if hash_name is not None:
        _check_digest(data, hash_name)
        return data, hash_name
    for name, prefix in _DIGEST_INFO.items():  # RFC 8017 §9.2 step 2
        if data.startswith(prefix) and len(data) == len(prefix) + _HASHES[name].digest_size:
            return data[len(prefix) :], name
    raise TlsHandshakeError("PKCS#1 v1.5 input is not a SHA-256/384 DigestInfo")


def tls_key(signer: DigestSigner, public_key: PublicKey | None = None) -> SeEcdsaKey | SeRsaKey:
    """The tlslite key object for ``signer`` (``public_key``: its key, if already fetched)."""
    pub = public_key if public_key is not None else signer.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        return SeRsaKey(signer, pub)
    return SeEcdsaKey(signer, pub)


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
        return int(self._conn.sock.fileno())

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


# -- optional: AES-GCM and X25519 from cryptography (DESIGN.md §7) ----------------------------
# tlslite-ng 0.8.2 has no public hook for another crypto backend: its cipher factory only knows
# M2Crypto, pycryptodome and pure Python, and the X25519 function is a module global of
# tlslite.keyexchange. enable_cryptography_backend() rebinds exactly those two names
# (tlslite.recordlayer.createAESGCM, tlslite.keyexchange.x25519), process-wide, after a
# self-test against tlslite's own implementations. Same outputs, same failure behaviour.


class _AesGcm:
    """tlslite's AEAD object interface (utils/aesgcm.py) over cryptography's AESGCM."""

    isBlockCipher = False  # noqa: N815 - tlslite's attribute names
    isAEAD = True  # noqa: N815
    nonceLength = 12  # noqa: N815
    tagLength = 16  # noqa: N815
    implementation = "cryptography"

    def __init__(self, key: bytes | bytearray) -> None:
        self.name = {16: "aes128gcm", 32: "aes256gcm"}[len(key)]
        self._aead = AESGCM(bytes(key))

    def __repr__(self) -> str:
        return f"_AesGcm({self.name})"

    def seal(self, nonce: bytes, plaintext: bytes, data: bytes) -> bytearray:
        return bytearray(self._aead.encrypt(bytes(nonce), bytes(plaintext), bytes(data)))

    def open(self, nonce: bytes, ciphertext: bytes, data: bytes) -> bytearray | None:
        try:  # tlslite's contract: None when the tag does not verify
            return bytearray(self._aead.decrypt(bytes(nonce), bytes(ciphertext), bytes(data)))
        except InvalidTag:
            return None


def _create_aesgcm(key: bytes | bytearray, implList: object = None) -> _AesGcm:  # noqa: N803
    return _AesGcm(key)


def _x25519(k: bytes | bytearray, u: bytes | bytearray) -> bytearray:
    """RFC 7748 X25519(k, u) as tlslite calls it (generator or peer share)."""
    priv = x25519.X25519PrivateKey.from_private_bytes(bytes(k))
    try:
        return bytearray(priv.exchange(x25519.X25519PublicKey.from_public_bytes(bytes(u))))
    except ValueError:  # all-zero output: tlslite's own check then raises its alert
        return bytearray(32)


def enable_cryptography_backend() -> None:
    """Route tlslite's AES-GCM and X25519 to ``cryptography`` (idempotent, process-wide)."""
    if recordlayer.createAESGCM is _create_aesgcm:
        return
    key, nonce, msg, ad = os.urandom(16), os.urandom(12), os.urandom(40), os.urandom(13)
    ours = _AesGcm(key).seal(nonce, msg, ad)
    if ours != python_aesgcm.new(bytearray(key)).seal(bytearray(nonce), bytearray(msg), ad):
        raise RuntimeError("AES-GCM self-test against tlslite failed")
    k = bytearray(os.urandom(32))
    base = bytearray(tl_x25519.X25519_G)
    if _x25519(k, base) != tl_x25519.x25519(k, base):
        raise RuntimeError("X25519 self-test against tlslite failed")
    recordlayer.createAESGCM = _create_aesgcm
    keyexchange.x25519 = _x25519

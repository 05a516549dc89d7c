"""Benchmark: mutual-TLS handshakes per second with the SE-held key, as a ratio to a file key.

Scope: full client handshakes by ``iotid.host.tls.connect`` (TCP connect, TLS 1.3 or 1.2 with
client authentication, server chain validation with ``cryptography``, close_notify) against a
local Python ``ssl`` server running in its own process (``CERT_REQUIRED``, no session tickets).
Subject: the key in the emulated card's mTLS applet, every CertificateVerify signed by SIGN
DIGEST through ``MtlsSession`` -> ``SmartCardProtocol`` -> ``LoopbackConnection`` ->
``Card.process``. Bound, timed in alternation with it: the same adapter with a file key (a
plain ``cryptography`` private key behind the same ``DigestSigner`` interface). ratio = SE
handshakes/s ÷ file-key handshakes/s; 1.0 would mean the card costs nothing.
Each pair is measured with tlslite's own pure-Python AES-GCM and X25519 and with
``enable_cryptography_backend()``; a second table gives the backend's speed-up on the file key.
Context rows: one SIGN DIGEST through the card vs one ``cryptography`` signature.

Not in scope: session resumption, PC/SC / T=1 transports (bus latency of a real SE: add it per
signature), the server's cost (separate process), data transfer after the handshake.

Run: ``.venv/bin/python bench/bench_tls.py`` (about 1-2 minutes).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tlslite import keyexchange, recordlayer  # type: ignore[import-untyped]

from _util import (
    Paired,
    calibrate,
    console,
    environment,
    fmt_rate,
    fmt_ratio,
    fmt_us,
    measure_paired,
    new_table,
)
from iotid.host.mtls import MtlsSession, perso_dgis
from iotid.host.protocol import SmartCardProtocol
from iotid.host.securitydomain import SecurityDomainSession
from iotid.host.tls import DigestSigner, connect, enable_cryptography_backend
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.mtls import MtlsApplet
from iotid.se.identity import IdentityStore
from iotid.spec import mtls
from iotid.transport.loopback import LoopbackConnection

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
HASHES = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}
KEYS: dict[str, Callable[[], PrivateKey]] = {
    "P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "RSA-2048": lambda: rsa.generate_private_key(65537, 2048),
}
SIGN_AS = {
    "P-256": ("sha256", "ecdsa"),
    "P-384": ("sha384", "ecdsa"),
    "RSA-2048": ("sha256", "pss"),
}
VERSIONS = ("TLS1.3", "TLS1.2")


# -- signers ------------------------------------------------------------------------------------
class FileKeySigner:
    """The bound: a ``cryptography`` private key in process memory behind ``DigestSigner``."""

    def __init__(self, key: PrivateKey) -> None:
        self._key = key

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign_digest(self, digest: bytes, hash_name: str, scheme: str) -> bytes:
        algo = HASHES[hash_name]
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(digest, ec.ECDSA(Prehashed(algo)))
        pad: padding.AsymmetricPadding = (
            padding.PSS(padding.MGF1(algo), algo.digest_size)
            if scheme == "pss"
            else padding.PKCS1v15()
        )
        return self._key.sign(digest, pad, Prehashed(algo))


class Counting:
    """Counts signatures, to check that a handshake really used the signer under test."""

    def __init__(self, inner: DigestSigner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def public_key(self) -> PublicKey:
        return self.inner.public_key()

    def sign_digest(self, digest: bytes, hash_name: str, scheme: str) -> bytes:
        self.calls.append((hash_name, scheme))
        return self.inner.sign_digest(digest, hash_name, scheme)


def card_session(key: PrivateKey, cert: x509.Certificate) -> MtlsSession:
    card = Card.create(None, uid=bytes(range(10)), applets=[MtlsApplet])
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(mtls.AID)
    sd.store_data(perso_dgis())
    with card.nvm.transaction():
        IdentityStore(card.nvm, card.keys).provision(key)
    session = MtlsSession(SmartCardProtocol(LoopbackConnection(card)))
    session.install_chain([cert])
    return session


# -- PKI and server -----------------------------------------------------------------------------
def _issue(
    cn: str, public: PublicKey, issuer: x509.Name, issuer_key: PrivateKey, *, ca: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if ca else issuer)
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
    if ca:
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        b = b.add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        eku = (
            ExtendedKeyUsageOID.CLIENT_AUTH
            if cn != "localhost"
            else ExtendedKeyUsageOID.SERVER_AUTH
        )
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        if cn == "localhost":
            san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(item: x509.Certificate | PrivateKey) -> bytes:
    if isinstance(item, x509.Certificate):
        return item.public_bytes(serialization.Encoding.PEM)
    return item.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def serve(directory: Path) -> None:
    """The server process: handshake, read until the client closes, repeat (until killed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(directory / "server.pem", directory / "server.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(directory / "ca.pem")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.num_tickets = 0
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                while tls.recv(4096):
                    pass
        except (OSError, ssl.SSLError):
            conn.close()


@contextmanager
def server_process(directory: Path) -> Iterator[int]:
    proc = subprocess.Popen(  # noqa: S603 - this script itself, our own arguments
        [sys.executable, __file__, "--serve", str(directory)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- the run ------------------------------------------------------------------------------------
@contextmanager
def backend(fast: bool) -> Iterator[None]:
    """tlslite's own AES-GCM/X25519, or cryptography's; restored afterwards."""
    saved = recordlayer.createAESGCM, keyexchange.x25519
    if fast:
        enable_cryptography_backend()
    try:
        yield
    finally:
        recordlayer.createAESGCM, keyexchange.x25519 = saved


@dataclass(frozen=True)
class Row:
    alg: str
    version: str
    fast: bool
    p: Paired


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    speedups: list[Row] = field(default_factory=list)
    signs: list[tuple[str, Paired]] = field(default_factory=list)


def handshake(
    port: int,
    ca: x509.Certificate,
    chain: list[x509.Certificate],
    signer: DigestSigner,
    version: str,
) -> None:
    connect("127.0.0.1", port, signer, chain, [ca], versions=(version,)).close()


def with_backend(fast: bool, fn: Callable[[], object]) -> None:
    with backend(fast):
        fn()


def bench_key(
    alg: str,
    port: int,
    ca: x509.Certificate,
    ca_key: PrivateKey,
    out: Results,
    target: float,
    reps: int,
) -> None:
    key = KEYS[alg]()
    card = card_session(key, _issue(f"device {alg}", key.public_key(), ca.subject, ca_key))
    file_key = FileKeySigner(key)
    chain = card.chain()

    def paired(fn: Callable[[], object], bound: Callable[[], object]) -> Paired:
        batch = calibrate(bound, target_s=target)
        return measure_paired(alg, fn, bound, batch, target_s=target, reps=reps)

    # Check before timing: each signer signs once per handshake, with the expected scheme.
    for version in VERSIONS:
        for signer in (card, file_key):
            counting = Counting(signer)
            handshake(port, ca, chain, counting, version)
            if counting.calls != [SIGN_AS[alg]]:
                raise SystemExit(f"{alg} {version}: signer calls {counting.calls}")

    for version in VERSIONS:
        se = partial(handshake, port, ca, chain, card, version)
        file_hs = partial(handshake, port, ca, chain, file_key, version)
        for fast in (False, True):
            with backend(fast):
                out.rows.append(Row(alg, version, fast, paired(se, file_hs)))
        # the backend's speed-up, file key: with it (subject) vs tlslite's own (bound)
        speedup = paired(
            partial(with_backend, True, file_hs), partial(with_backend, False, file_hs)
        )
        out.speedups.append(Row(alg, version, True, speedup))

    hash_name, scheme = SIGN_AS[alg]
    digest = bytes(HASHES[hash_name].digest_size)
    out.signs.append(
        (
            f"{alg} {scheme}-{hash_name}",
            paired(
                partial(card.sign_digest, digest, hash_name, scheme),
                partial(file_key.sign_digest, digest, hash_name, scheme),
            ),
        )
    )


def report(out: Results) -> None:
    table = new_table(
        "Mutual-TLS handshakes per second: SE-held key vs file key "
        "(ratio = SE handshakes/s ÷ file-key handshakes/s)",
        [
            ("key", "left"),
            ("TLS", "left"),
            ("AES-GCM/X25519", "left"),
            ("SE hs/s", "right"),
            ("ms/hs", "right"),
            ("file key hs/s", "right"),
            ("ms/hs", "right"),
            ("spread", "right"),
            ("ratio", "right"),
        ],
    )
    for r in out.rows:
        s, b = r.p.subject, r.p.bound
        table.add_row(
            r.alg,
            r.version,
            "cryptography" if r.fast else "tlslite (Python)",
            fmt_rate(s.ops_per_s),
            f"{s.per_op * 1e3:.1f}",
            fmt_rate(b.ops_per_s),
            f"{b.per_op * 1e3:.1f}",
            f"{100 * s.spread:.0f}%",
            fmt_ratio(r.p.ratio),
        )
    console.print(table)

    st = new_table(
        "enable_cryptography_backend(): speed-up on file-key handshakes "
        "(ratio = hs/s with it ÷ hs/s with tlslite's own AES-GCM/X25519)",
        [
            ("key", "left"),
            ("TLS", "left"),
            ("with", "right"),
            ("without", "right"),
            ("ratio", "right"),
        ],
    )
    for r in out.speedups:
        st.add_row(
            r.alg,
            r.version,
            fmt_rate(r.p.subject.ops_per_s),
            fmt_rate(r.p.bound.ops_per_s),
            fmt_ratio(r.p.ratio),
        )
    console.print(st)

    sg = new_table(
        "Context: one signature (ratio = SIGN DIGEST/s through the card ÷ cryptography sign/s)",
        [
            ("scheme", "left"),
            ("card µs", "right"),
            ("cryptography µs", "right"),
            ("ratio", "right"),
        ],
    )
    for label, p in out.signs:
        sg.add_row(label, fmt_us(p.subject.per_op), fmt_us(p.bound.per_op), fmt_ratio(p.ratio))
    console.print(sg)
    for r in out.rows:
        # from the paired ratio (robust to load), not from two separately noisy medians
        extra_ms = r.p.bound.per_op * (1 / r.p.ratio - 1) * 1e3
        console.print(
            f"{r.alg} {r.version} ({'cryptography' if r.fast else 'tlslite'} AES-GCM/X25519): "
            f"SE {fmt_rate(r.p.subject.ops_per_s)} hs/s, ratio {fmt_ratio(r.p.ratio)}; "
            f"the card adds {extra_ms:.2f} ms per handshake"
        )


def run(target: float, reps: int) -> None:
    console.print(environment())
    out = Results()
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        directory = Path(tmp)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _issue("bench CA", ca_key.public_key(), x509.Name([]), ca_key, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _issue("localhost", server_key.public_key(), ca.subject, ca_key)
        (directory / "ca.pem").write_bytes(_pem(ca))
        (directory / "server.pem").write_bytes(_pem(server))
        (directory / "server.key").write_bytes(_pem(server_key))
        with server_process(directory) as port:
            for alg in KEYS:
                bench_key(alg, port, ca, ca_key, out, target, reps)
    report(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", type=float, default=0.3, help="seconds per timed batch")
    parser.add_argument(
        "--reps", type=int, default=5, help="timed batches per figure (median kept)"
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
    else:
        run(args.target, args.reps)


if __name__ == "__main__":
    main()

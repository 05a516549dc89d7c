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
from iotid.host.tls import DigestSigner, connect, enable_cryptography_backend
from iotid.spec.algorithms import KeyAlg

# tests/ on the path: the test PKI and the signers of tests/support (this file runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.pki import Ca, ca, new_key, write_pem
from support.tls import HASHES, Recording, SoftwareSigner, card_signer

KEYS = {"P-256": KeyAlg.EC_P256, "P-384": KeyAlg.EC_P384, "RSA-2048": KeyAlg.RSA_2048}
SIGN_AS = {
    "P-256": ("sha256", "ecdsa"),
    "P-384": ("sha384", "ecdsa"),
    "RSA-2048": ("sha256", "pss"),
}
VERSIONS = ("TLS1.3", "TLS1.2")


# -- the server ---------------------------------------------------------------------------------
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


def bench_key(alg: str, port: int, authority: Ca, out: Results, target: float, reps: int) -> None:
    key = new_key(KEYS[alg])
    card = card_signer(key, authority.client(f"device {alg}", key.public_key()))
    file_key = SoftwareSigner(key)
    ca = authority.cert
    chain = card.chain()

    def paired(fn: Callable[[], object], bound: Callable[[], object]) -> Paired:
        batch = calibrate(bound, target_s=target)
        return measure_paired(alg, fn, bound, batch, target_s=target, reps=reps)

    # Check before timing: each signer signs once per handshake, with the expected scheme.
    for version in VERSIONS:
        for signer in (card, file_key):
            counting = Recording(signer)
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
        authority = ca("bench CA")
        server, server_key = authority.server()
        write_pem(directory / "ca.pem", authority.cert)
        write_pem(directory / "server.pem", server)
        write_pem(directory / "server.key", server_key)
        with server_process(directory) as port:
            for alg in KEYS:
                bench_key(alg, port, authority, out, target, reps)
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

"""Benchmark: full mutual-TLS connections per second against the device gateway, as a ratio to raw
``ssl`` handshakes against a bare stdlib server with the same certificates.

Scope: several client threads (Python ``ssl``, software P-256 keys certified by the fleet's
issuing CA, no session resumption: every connection is a full handshake) connect, complete one
exchange and close, for a fixed time. Subject: :class:`iotid.fleet.gateway.GatewayServer` in its
own process (asyncio, stdlib ``ssl``, h11; the identity check, the revocation callback, one
``GET /v1/device/whoami`` through the worker pool, presence off, so no database). Bound, timed
in alternation with it: a bare threaded stdlib ``ssl`` server in its own process with the same
certificate, key, trust and TLS version, which answers one byte after the handshake (so that
both sides' handshake work is inside the timed connection, as with the gateway's response).
ratio = gateway connections/s ÷ bare connections/s; 1.0 would mean the gateway costs nothing
beyond the TLS handshake.

Not in scope: the database (presence, slices), the SE-held key (``bench_tls.py``), requests on a
kept-alive connection, session resumption.

Run: ``.venv/bin/python bench/bench_gateway.py`` (about 30-60 s).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import http.client
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from _util import console, environment, fmt_rate, fmt_ratio, new_table
from iotid.fleet.gateway import GatewayServer, Routes, server_context
from iotid.fleet.issuing import FleetKeys, create_fleet_keys, spki_der

# tests/ on the path: the test PKI (this file runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.pki import ca

UID = "0102030405060708090A"
VERSIONS = {"TLS1.3": ssl.TLSVersion.TLSv1_3, "TLS1.2": ssl.TLSVersion.TLSv1_2}


# -- the two servers (each in its own process) ---------------------------------------------------
def serve_gateway(directory: Path) -> None:
    keys = FleetKeys.load(directory)
    server = GatewayServer(keys, Routes(), lambda _uid, _serial: False, host="127.0.0.1", port=0)
    running = server.run_in_thread()
    print(running.port, flush=True)
    threading.Event().wait()


def serve_bare(directory: Path) -> None:
    context = server_context(FleetKeys.load(directory))
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    print(listener.getsockname()[1], flush=True)
    pool = concurrent.futures.ThreadPoolExecutor(16)

    def one(conn: socket.socket) -> None:
        conn.settimeout(10)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's transports
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"\x00")
                while tls.recv(4096):
                    pass
        except (OSError, ssl.SSLError):
            conn.close()

    while True:
        conn, _ = listener.accept()
        pool.submit(one, conn)


@contextmanager
def server_process(kind: str, directory: Path) -> Iterator[int]:
    proc = subprocess.Popen(  # noqa: S603 - this script itself, our own arguments
        [sys.executable, __file__, f"--serve-{kind}", str(directory)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- clients --------------------------------------------------------------------------------------
def client_context(keys: FleetKeys, directory: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = keys.issuing.issue_client(spki_der(key.public_key()), UID, now=dt.datetime.now(dt.UTC))
    (directory / "client.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "client.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(cadata=keys.ca_bundle_pem.decode())
    context.minimum_version = context.maximum_version = version
    context.load_cert_chain(directory / "client.pem", directory / "client.key")
    return context


def gateway_connection(port: int, context: ssl.SSLContext) -> None:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    conn.request("GET", "/v1/device/whoami")
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise SystemExit(f"gateway answered {response.status}")
    conn.close()


def bare_connection(port: int, context: ssl.SSLContext) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client does
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            if tls.recv(1) != b"\x00":
                raise SystemExit("the bare server did not answer")


def throughput(fn: Callable[[], None], threads: int, seconds: float) -> float:
    """Connections per second of ``threads`` threads calling ``fn`` for ``seconds``."""
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def worker(i: int) -> None:
        while time.perf_counter() < stop:
            fn()
            counts[i] += 1

    start = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


@dataclass(frozen=True)
class Row:
    version: str
    threads: int
    gateway: list[float]
    bare: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(g / b for g, b in zip(self.gateway, self.bare, strict=True))


def make_keys(directory: Path) -> FleetKeys:
    root = ca("bench issuance root")
    return create_fleet_keys(
        directory, root.cert, lambda csr: root.issue(csr.subject, csr.public_key(), ca=True)
    )


def run(seconds: float, reps: int, thread_counts: list[int]) -> None:
    console.print(environment())
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        directory = Path(tmp)
        keys = make_keys(directory / "fleet")
        with (
            server_process("gateway", keys.directory) as gw_port,
            server_process("bare", keys.directory) as bare_port,
        ):
            for name, version in VERSIONS.items():
                context = client_context(keys, directory, version)
                subject = partial(gateway_connection, gw_port, context)
                bound = partial(bare_connection, bare_port, context)
                subject(), bound()  # warm up both servers
                for threads in thread_counts:
                    gw, bare = [], []
                    for _ in range(reps):
                        gw.append(throughput(subject, threads, seconds))
                        bare.append(throughput(bound, threads, seconds))
                    rows.append(Row(name, threads, gw, bare))
    table = new_table(
        "Device gateway: full mTLS connections per second (handshake + GET whoami + close) vs a "
        "bare stdlib ssl server (handshake + 1 byte + close); ratio = gateway ÷ bare",
        [
            ("TLS", "left"),
            ("client threads", "right"),
            ("gateway conn/s", "right"),
            ("bare ssl conn/s", "right"),
            ("spread", "right"),
            ("ratio", "right"),
        ],
    )
    for r in rows:
        g = statistics.median(r.gateway)
        table.add_row(
            r.version,
            str(r.threads),
            fmt_rate(g),
            fmt_rate(statistics.median(r.bare)),
            f"{100 * (max(r.gateway) - min(r.gateway)) / g:.0f}%",
            fmt_ratio(r.ratio),
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one timed round")
    parser.add_argument("--reps", type=int, default=3, help="rounds per figure (median kept)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--serve-gateway", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_gateway:
        serve_gateway(args.serve_gateway)
    elif args.serve_bare:
        serve_bare(args.serve_bare)
    else:
        run(args.seconds, args.reps, args.threads)


if __name__ == "__main__":
    main()

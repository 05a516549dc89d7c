"""Benchmark: end-to-end enrollments per second over HTTP on PostgreSQL, as a ratio to the raw
``cryptography`` work one enrollment needs, measured in the same run.

Scope: a real 2-of-3 ceremony, the fleet's keys, one P-256 batch of ``--devices`` cards made by
the factory line and booted (``tests/support/fleetworld.py``), the fleet (``FleetRuntime``: the
FastAPI app under uvicorn, the gateway, the revocation follower) on a fresh PostgreSQL database
(``--db``, default the machine's ``test`` server; the bench creates and drops ``iotid_bench``).
Each enrollment is what a device does: POST /v1/enrollment/nonce, a quote from its card over
loopback, POST /v1/enrollment (chain walk, registry lookup under a row lock, nonce consumed,
certificate issued, evidence and audit rows, one commit). ``--threads`` devices enroll at once.

- **subject**: enrollments/s, wall clock over all devices.
- **bound**: per enrollment, the raw public-key operations with keys already loaded: the COSE
  signature verify (P-256), the attestation and batch CA certificate verifies (P-384 root and
  batch CA), the card's quote signature (P-256 sign) and the client certificate's signature
  (P-256 sign): (sets of five)/s in one thread.

ratio = enrollments/s ÷ raw sets/s. Run: ``.venv/bin/python bench/bench_enrollment.py``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from iotid.fleet.auth import Role, create_token
from iotid.fleet.config import FleetConfig
from iotid.fleet.runtime import FleetRuntime
from support.fleetworld import build_world

console = Console()


def _post(url: str, body: dict[str, object], token: str | None = None) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (local)
        result: dict[str, object] = json.loads(response.read())
        return result


def _raw_rate(seconds: float = 1.0) -> float:
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    msg = b"x" * 200
    s256 = p256.sign(msg, ec.ECDSA(hashes.SHA256()))
    s384 = p384.sign(msg, ec.ECDSA(hashes.SHA384()))
    pub256, pub384 = p256.public_key(), p384.public_key()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        pub256.verify(s256, msg, ec.ECDSA(hashes.SHA256()))
        pub384.verify(s384, msg, ec.ECDSA(hashes.SHA384()))
        pub384.verify(s384, msg, ec.ECDSA(hashes.SHA384()))
        p256.sign(msg, ec.ECDSA(hashes.SHA256()))
        p256.sign(msg, ec.ECDSA(hashes.SHA256()))
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=60)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--db", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    admin = psycopg.connect(args.db.replace("+psycopg", ""), autocommit=True)
    admin.execute("DROP DATABASE IF EXISTS iotid_bench")
    admin.execute("CREATE DATABASE iotid_bench")
    url = args.db.rsplit("/", 1)[0] + "/iotid_bench"
    with tempfile.TemporaryDirectory(prefix="iotid-bench-enroll-") as tmp:
        console.print(f"making {args.devices} cards with the factory line ...")
        world = build_world(Path(tmp), {"bench": ("p256", args.devices)})
        # All devices enroll from one address: the per-client nonce rate limit is off here.
        config = FleetConfig(world.fleet_dir, url, api_port=0, gateway_port=0, nonce_rate=0)
        runtime = FleetRuntime(config)
        running = runtime.run_in_thread()
        try:
            token = create_token(runtime.db, Role.ADMIN, dt.timedelta(hours=1))
            batch = world.batches["bench"]
            _post(
                f"{running.api_url}/v1/batches",
                {
                    "manifest": base64.b64encode(batch.manifest_bytes).decode(),
                    "signature": base64.b64encode(batch.signature).decode(),
                },
                token.secret,
            )
            cards = list(batch.cards)
            lock = threading.Lock()
            failures: list[str] = []

            def worker() -> None:
                while True:
                    with lock:
                        if not cards:
                            return
                        card = cards.pop()
                    se = card.se()
                    nonce = _post(f"{running.api_url}/v1/enrollment/nonce", {})["nonce"]
                    quote = se.attestation.attest(base64.b64decode(str(nonce)))
                    result = _post(
                        f"{running.api_url}/v1/enrollment",
                        {"quote": base64.b64encode(quote).decode()},
                    )
                    if result.get("uid") != card.uid_hex:
                        failures.append(card.uid_hex)

            start = time.perf_counter()
            threads = [threading.Thread(target=worker) for _ in range(args.threads)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - start
        finally:
            running.stop()
    admin.execute("DROP DATABASE IF EXISTS iotid_bench")
    rate = args.devices / elapsed
    raw = _raw_rate()
    table = Table(title="end-to-end enrollment over HTTP, PostgreSQL")
    for column in ("devices", "threads", "enrollments/s", "raw crypto sets/s", "ratio", "failed"):
        table.add_column(column)
    table.add_row(
        str(args.devices),
        str(args.threads),
        f"{rate:.1f}",
        f"{raw:.0f}",
        f"{rate / raw:.3f}",
        str(len(failures)),
    )
    console.print(table)
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

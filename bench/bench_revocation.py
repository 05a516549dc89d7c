"""Benchmark: revocation-to-refusal latency across two processes, against the 1 s goal.

Scope: a fresh database (a PostgreSQL schema on ``IOTID_TEST_POSTGRES_URL``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``; and a SQLite file for comparison) with one
batch of N devices. A CHILD process (``tests/unit/fleet/revocation_follower_child.py``) runs a
``RevocationFollower`` on its own ``Database`` (PostgreSQL: LISTEN/NOTIFY; SQLite: 100 ms polls)
and stamps ``time.time()`` when it has applied each event to its index (the moment a gateway in
that process would refuse the device). This process revokes the devices one at a time through
``RevocationService.revoke_device`` with random gaps, stamping ``time.time()`` when each revoke
transaction has committed. Latency = child's applied-at - parent's committed-at (same host, same
clock). Printed: p50 / p99 / max and p99 as a ratio to the 1 s goal (below 1.0 meets it), and the
revoke transaction's own duration for orientation.

Not in scope: the gateway's connection teardown (the gateway benchmarks), HTTP. No assertion.

Run: ``.venv/bin/python bench/bench_revocation.py [--events N] [--no-sqlite]`` (~10-30 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy.engine import URL, make_url

from _util import console, environment, fmt_ratio, new_table
from iotid.fleet.db import Database
from iotid.fleet.issuing import FleetKeys, create_fleet_keys
from iotid.fleet.models import Batch, Device, DeviceState
from iotid.fleet.revocation import RevocationService

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "tests" / "unit" / "fleet" / "revocation_follower_child.py"
POSTGRES_URL = os.environ.get(
    "IOTID_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
GOAL_S = 1.0
ACTOR = "bench"


def _fleet_keys(directory: Path) -> FleetKeys:
    root_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench root")])
    now = dt.datetime.now(dt.UTC)
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )

    def certify(csr: x509.CertificateSigningRequest) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(name)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(root_key, hashes.SHA256())
        )

    return create_fleet_keys(directory, root, certify)


def _seed(db: Database, count: int) -> list[str]:
    """One batch of ``count`` active devices (rows only: no manifest needed to revoke)."""
    now = dt.datetime.now(dt.UTC)
    uids = [f"{0xBE00000000 + n:010X}" for n in range(count)]
    with db.transaction() as session:
        batch = Batch(
            name="bench",
            algorithm="p256",
            batch_ca_pem="-",
            batch_ca_sha256="0" * 64,
            root_sha256="0" * 64,
            manifest_sha256="0" * 64,
            manifest_json="{}",
            manifest_signature=b"",
            imported_at=now,
        )
        session.add(batch)
        session.flush()
        for uid in uids:
            session.add(
                Device(
                    uid=uid,
                    batch_id=batch.id,
                    state=DeviceState.ACTIVE,
                    attestation_cert_sha256="0" * 64,
                    created_at=now,
                    updated_at=now,
                )
            )
    return uids


def _run(label: str, url: URL, keys: FleetKeys, events: int) -> dict[str, float | str]:
    db = Database(url)
    db.upgrade()
    uids = _seed(db, events)
    child = subprocess.Popen(  # noqa: S603 (our interpreter, our script)
        [sys.executable, str(CHILD), url.render_as_string(hide_password=False), str(events)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert child.stdout is not None
    ready = json.loads(child.stdout.readline())
    if not ready.get("ready"):
        raise SystemExit(f"{label}: follower child failed: {ready}")
    service = RevocationService(db, keys)
    committed: dict[int, float] = {}
    durations: list[float] = []
    rng = random.Random(1)
    for uid in uids:
        time.sleep(rng.uniform(0.02, 0.08))
        started = time.time()
        result = service.revoke_device(uid, "key_compromise", actor=ACTOR)
        done = time.time()
        assert result.event_id is not None
        committed[result.event_id] = done
        durations.append(done - started)
    latencies: list[float] = []
    for _ in range(events):
        line = json.loads(child.stdout.readline())
        latencies.append(line["applied_at"] - committed[line["event"]])
    child.wait(timeout=10)
    db.dispose()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return {
        "label": label,
        "p50": statistics.median(latencies),
        "p99": p99,
        "max": latencies[-1],
        "revoke": statistics.median(durations),
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()
    console.print(environment())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        keys = _fleet_keys(Path(tmp) / "fleet")
        server = make_url(POSTGRES_URL)
        schema = "iotid_bench_" + secrets.token_hex(4)
        admin = psycopg.connect(
            host=server.host or "127.0.0.1",
            port=server.port or 5432,
            user=server.username or "postgres",
            password=server.password,
            dbname=server.database or "postgres",
            autocommit=True,
        )
        try:
            admin.execute(f'CREATE SCHEMA "{schema}"')
            url = server.update_query_dict({"options": f"-csearch_path={schema}"})
            rows.append(_run("PostgreSQL (LISTEN/NOTIFY)", url, keys, args.events))
        finally:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            admin.close()
        if not args.no_sqlite:
            url = make_url(f"sqlite:///{Path(tmp) / 'bench.sqlite3'}")
            rows.append(_run("SQLite (100 ms poll)", url, keys, args.events))
    table = new_table(
        f"Revocation -> applied in another process ({args.events} revocations,"
        f" goal {GOAL_S:.0f} s)",
        [
            ("back end", "left"),
            ("p50", "right"),
            ("p99", "right"),
            ("max", "right"),
            ("p99 / goal", "right"),
            ("revoke txn (median)", "right"),
        ],
    )
    for row in rows:
        p99 = float(row["p99"])
        table.add_row(
            str(row["label"]),
            _ms(float(row["p50"])),
            _ms(p99),
            _ms(float(row["max"])),
            fmt_ratio(p99 / GOAL_S),
            _ms(float(row["revoke"])),
        )
    console.print(table)
    console.print("p99 / goal below 1.0 meets the issue's 'within a second, across processes'.")


if __name__ == "__main__":
    main()

"""Revocation against OpenSSL 3: real client certificates from a ceremony-built fleet, the OCSP
responder over real HTTP (``openssl ocsp -url``, response signature verified against the chain)
and the CRLs (``openssl verify -crl_check_all`` with the issuing CA's CRL from the API and the
root's CRL from the factory), for a good device, a revoked device and a device whose batch CA was
revoked."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from sqlalchemy import select

from iotid.fleet.db import Database
from iotid.fleet.devices import DeviceService
from iotid.fleet.issuing import serial_hex, spki_sha256
from iotid.fleet.models import Certificate, Device
from iotid.fleet.revocation import RevocationService
from iotid.fleet.revocation.api import install
from support.fleetworld import FleetWorld, build_world

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")
ACTOR = "token:test"


def _pem(item: x509.Certificate) -> bytes:
    return item.public_bytes(serialization.Encoding.PEM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Fleet:
    world: FleetWorld
    db: Database
    url: str
    files: Path
    #: uid -> PEM file of its client certificate
    certs: dict[str, Path]

    def openssl(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert OPENSSL is not None
        return subprocess.run(
            [OPENSSL, *args], capture_output=True, text=True, timeout=30, check=False
        )

    def ocsp_status(self, uid: str) -> tuple[str, str]:
        done = self.openssl(
            "ocsp",
            "-url", f"{self.url}/ocsp",
            "-issuer", str(self.files / "issuing.pem"),
            "-cert", str(self.certs[uid]),
            "-CAfile", str(self.files / "chain.pem"),
            "-nonce",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        line = done.stdout.splitlines()[0]
        return line.split(": ", 1)[1].strip(), done.stderr

    def verify(self, uid: str) -> subprocess.CompletedProcess[str]:
        issuing_crl = self.files / "issuing.crl"
        issuing_crl.write_bytes(httpx.get(f"{self.url}/crl/issuing.crl").content)
        root_crl = self.files / "root.crl"
        root_crl.write_bytes(httpx.get(f"{self.url}/crl/root.crl").content)
        return self.openssl(
            "verify",
            "-crl_check_all",
            "-CAfile", str(self.files / "root.pem"),
            "-untrusted", str(self.files / "issuing.pem"),
            "-CRLfile", str(issuing_crl),
            "-CRLfile", str(root_crl),
            str(self.certs[uid]),
        )  # fmt: skip


def _issue_certificates(world: FleetWorld, db: Database, files: Path) -> dict[str, Path]:
    keys = world.keys
    now = dt.datetime.now(dt.UTC)
    out: dict[str, Path] = {}
    with db.transaction() as session:
        for device in session.execute(select(Device)).scalars():
            assert device.identity_spki is not None
            cert = keys.issuing.issue_client(device.identity_spki, device.uid, now=now)
            session.add(
                Certificate(
                    serial=serial_hex(cert.serial_number),
                    device_id=device.id,
                    der=cert.public_bytes(serialization.Encoding.DER),
                    key_epoch=1,
                    spki_sha256=spki_sha256(device.identity_spki),
                    issuer_sha256=keys.issuing.sha256,
                    not_before=cert.not_valid_before_utc,
                    not_after=cert.not_valid_after_utc,
                )
            )
            path = files / f"{device.uid}.pem"
            path.write_bytes(_pem(cert))
            out[device.uid] = path
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("revocation-openssl")
    world = build_world(base / "world", {"p256-a": ("p256", 2), "p256-b": ("p256", 1)})
    db = Database(f"sqlite:///{base / 'fleet.sqlite3'}")
    db.upgrade()
    devices = DeviceService(db, world.root)
    for batch in world.batches.values():
        devices.import_manifest(batch.manifest_bytes, batch.signature, actor=ACTOR)
    files = base / "files"
    files.mkdir()
    keys = world.keys
    (files / "root.pem").write_bytes(_pem(keys.root))
    (files / "issuing.pem").write_bytes(_pem(keys.issuing.certificate))
    (files / "chain.pem").write_bytes(_pem(keys.root) + _pem(keys.issuing.certificate))
    certs = _issue_certificates(world, db, files)
    app = FastAPI()
    install(app, db, keys)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield Fleet(world, db, f"http://127.0.0.1:{port}", files, certs)
    finally:
        server.should_exit = True
        thread.join(5)
        db.dispose()


def test_openssl_sees_good_revoked_and_batch_revoked_devices(fleet: Fleet) -> None:
    assert fleet.world.keys.root_crl is not None
    good, revoked = (c.uid_hex for c in fleet.world.batches["p256-a"].cards)
    (batch_device,) = (c.uid_hex for c in fleet.world.batches["p256-b"].cards)
    for uid in (good, revoked, batch_device):
        status, stderr = fleet.ocsp_status(uid)
        assert status == "good" and "Response verify OK" in stderr
        done = fleet.verify(uid)
        assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr

    service = RevocationService(fleet.db, fleet.world.keys)
    service.revoke_device(revoked, "key_compromise", actor=ACTOR)
    service.revoke_batch("p256-b", "ca_compromise", actor=ACTOR)

    status, stderr = fleet.ocsp_status(good)
    assert status == "good" and "Response verify OK" in stderr
    assert fleet.verify(good).returncode == 0
    for uid, reason in ((revoked, "keyCompromise"), (batch_device, "cACompromise")):
        status, stderr = fleet.ocsp_status(uid)
        assert status == "revoked" and "Response verify OK" in stderr
        details = fleet.openssl(
            "ocsp",
            "-url", f"{fleet.url}/ocsp",
            "-issuer", str(fleet.files / "issuing.pem"),
            "-cert", str(fleet.certs[uid]),
            "-CAfile", str(fleet.files / "chain.pem"),
        ).stdout  # fmt: skip
        assert f"Reason: {reason}" in details
        done = fleet.verify(uid)
        assert done.returncode != 0
        assert "certificate revoked" in done.stdout + done.stderr

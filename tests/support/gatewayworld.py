"""Plumbing of the gateway, telemetry and commands tests: a registry with enrolled devices and
Python ``ssl`` clients for the device gateway.

Scope: :func:`import_world` (every batch of a :class:`FleetWorld` into a database),
:func:`enroll` (stands in for the enrollment slice: the registry gets the card's identity key and
epoch, the device moves manufactured -> enrolled, the fleet's issuing CA certifies the key),
:func:`software_device` (a software P-256 key certified for a UID), :func:`client_context` (a
stdlib ``ssl`` client context with a client certificate, trusting the fleet's CA bundle) and
:func:`request` (one HTTP exchange on an ``http.client`` connection, JSON decoded).

Not covered: the enrollment slice's checks (quotes, nonces), revocation.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import update

from iotid.fleet.db import Database
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.issuing import FleetKeys, spki_der
from iotid.fleet.models import Device, DeviceState
from support.fleetworld import FleetWorld, WorldCard


def import_world(db: Database, world: FleetWorld) -> DeviceService:
    service = DeviceService(db, world.root)
    for batch in world.batches.values():
        service.import_manifest(batch.manifest_bytes, batch.signature, actor="t")
    return service


def enroll(
    db: Database,
    keys: FleetKeys,
    card: WorldCard,
    *,
    epoch: int = 1,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """The card's current identity key registered at ``epoch``, state enrolled, a certificate."""
    public_key = card.se().mtls.public_key()
    spki = spki_der(public_key)
    with db.transaction() as session:
        session.execute(
            update(Device)
            .where(Device.uid == card.uid_hex)
            .values(identity_spki=spki, key_epoch=epoch)
        )
    DeviceService(db, keys.root).transition(
        card.uid_hex, {DeviceState.MANUFACTURED}, DeviceState.ENROLLED, actor="t"
    )
    when = now or dt.datetime.now(dt.UTC)
    return keys.issuing.issue_client(spki, card.uid_hex, now=when)


def software_device(
    keys: FleetKeys, uid: str
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = keys.issuing.issue_client(spki_der(key.public_key()), uid, now=dt.datetime.now(dt.UTC))
    return key, cert


def client_context(
    keys: FleetKeys,
    directory: Path,
    key: ec.EllipticCurvePrivateKey | None,
    chain: list[x509.Certificate] | None,
    *,
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context presenting ``chain`` (leaf first) for ``key``; None: no certificate."""
    context = ssl.create_default_context(cadata=keys.ca_bundle_pem.decode())
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if key is not None and chain:
        directory.mkdir(parents=True, exist_ok=True)
        n = len(list(directory.iterdir()))
        cert_path, key_path = directory / f"c{n}.pem", directory / f"k{n}.pem"
        cert_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(cert_path, key_path)
    return context


def https(port: int, context: ssl.SSLContext, timeout: float = 10) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=timeout)


def request(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """One exchange; the JSON body decoded (bytes when it is not JSON)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"content-type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    if response.getheader("content-type", "").startswith("application/json"):
        return response.status, json.loads(payload)
    return response.status, payload

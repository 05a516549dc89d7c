"""Revocation test helpers: cheap fleet keys under the test root, and devices with certificates.

- :func:`make_fleet_keys`: a fleet key directory whose issuing CA the ``Manifests`` test root
  certifies (no ceremony: milliseconds instead of seconds);
- :func:`seed_batch`: import a signed manifest and give each device real client certificates
  from the issuing CA, stored as the enrollment slice would store them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy import select

from iotid.fleet.db import Database
from iotid.fleet.devices import DeviceService
from iotid.fleet.issuing import FleetKeys, create_fleet_keys, serial_hex, spki_sha256
from iotid.fleet.models import Certificate, Device, DeviceState
from support.manifests import Manifests

ACTOR = "token:test"


def make_fleet_keys(directory: Path, manifests: Manifests) -> FleetKeys:
    def certify(csr: x509.CertificateSigningRequest) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(csr.subject)
            .issuer_name(manifests.root.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(manifests.root_key, hashes.SHA384())
        )

    return create_fleet_keys(directory, manifests.root, certify)


@dataclass(frozen=True)
class Seeded:
    batch: str
    uids: list[str]
    #: uid -> the certificates issued to it (oldest first)
    certs: dict[str, list[x509.Certificate]]

    def serials(self, uid: str) -> list[str]:
        return [serial_hex(c.serial_number) for c in self.certs[uid]]


def seed_batch(
    db: Database,
    manifests: Manifests,
    keys: FleetKeys,
    batch: str,
    first: int,
    count: int,
    *,
    certs_per_device: int = 1,
    state: DeviceState = DeviceState.ACTIVE,
) -> Seeded:
    data, signature = manifests.make(batch, manifests.uids(first, count))
    DeviceService(db, manifests.root).import_manifest(data, signature, actor=ACTOR)
    now = dt.datetime.now(dt.UTC)
    certs: dict[str, list[x509.Certificate]] = {}
    with db.transaction() as session:
        devices = session.execute(
            select(Device).where(
                Device.uid.in_([u.hex().upper() for u in manifests.uids(first, count)])
            )
        ).scalars()
        for device in devices:
            device.state = state
            assert device.identity_spki is not None
            issued = []
            for _ in range(certs_per_device):
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
                issued.append(cert)
            certs[device.uid] = issued
    return Seeded(batch, sorted(certs), certs)

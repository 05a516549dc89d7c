"""The fleet's issuing CA and its key directory.

Scope: re-exports of :mod:`iotid.fleet.issuing.ca` and :mod:`iotid.fleet.issuing.keys`.
Not in scope: enrollment rules (``iotid.fleet.enrollment``), OCSP/CRL (``iotid.fleet.revocation``).
"""

from __future__ import annotations

from iotid.fleet.issuing.ca import (
    CLIENT_CERT_LIFETIME,
    IssuingCA,
    certificate_sha256,
    device_uri,
    serial_hex,
    spki_der,
    spki_sha256,
    uid_from_certificate,
)
from iotid.fleet.issuing.keys import FleetKeys, FleetKeysError, create_fleet_keys

__all__ = [
    "CLIENT_CERT_LIFETIME",
    "FleetKeys",
    "FleetKeysError",
    "IssuingCA",
    "certificate_sha256",
    "create_fleet_keys",
    "device_uri",
    "serial_hex",
    "spki_der",
    "spki_sha256",
    "uid_from_certificate",
]

"""The telemetry slice's rules: accept a payload a device signed with its identity key; list them.

Scope: :class:`TelemetryService`. :meth:`~TelemetryService.accept` takes the caller's
:class:`DeviceContext` (the gateway proved its certificate), refuses payloads over
:data:`MAX_PAYLOAD` and devices that are not enrolled/active/rotating, verifies the signature
with the registry's CURRENT identity key of that device (:func:`verify_identity_signature`,
the rule of ``iotid.spec.rotation``: ECDSA DER with the curve's hash, or RSA-PSS SHA-256 with
MGF1-SHA-256 and a 32-byte salt) and stores it with the key's epoch. Telemetry is not audited
(volume). :meth:`~TelemetryService.list` is the operators' read.

Not in scope: SQL (``repository``), HTTP (``api``, ``gateway``), what the payload means.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from iotid.crypto import identity_rule
from iotid.fleet.db import Database
from iotid.fleet.devices.service import normalize_uid
from iotid.fleet.errors import Conflict, Forbidden, InvalidInput, NotFound
from iotid.fleet.gateway.routing import DeviceContext
from iotid.fleet.models import DeviceState, Telemetry, utcnow
from iotid.fleet.telemetry.repository import TelemetryRepository

__all__ = [
    "MAX_LIST",
    "MAX_PAYLOAD",
    "TelemetryService",
    "TelemetryView",
    "verify_identity_signature",
]

#: Largest accepted payload (bytes).
MAX_PAYLOAD = 64 * 1024
#: Largest accepted signature (an RSA-4096 signature is 512 bytes).
MAX_SIGNATURE = 1024
MAX_LIST = 1000
#: RSA-PSS salt length of the identity-signature rule (RFC 8017 §8.1; = SHA-256's length).
PSS_SALT = 32
_ALLOWED = frozenset({DeviceState.ENROLLED, DeviceState.ACTIVE, DeviceState.ROTATING})
_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}


def verify_identity_signature(spki: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` over ``message`` verifies with the identity key ``spki`` (DER)."""
    try:
        key = serialization.load_der_public_key(spki)
    except (ValueError, UnsupportedAlgorithm):
        return False
    return identity_rule.verify(key, signature, message)


@dataclass(frozen=True)
class TelemetryView:
    id: int
    uid: str
    key_epoch: int
    payload: bytes
    signature: bytes
    received_at: dt.datetime

    def __repr__(self) -> str:
        return f"TelemetryView(id={self.id}, uid={self.uid!r}, bytes={len(self.payload)})"


class TelemetryService:
    """Signed telemetry of one fleet."""

    def __init__(self, db: Database, *, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    def accept(self, ctx: DeviceContext, payload: bytes, signature: bytes) -> int:
        """Verify and store one payload of the calling device; returns its id."""
        if not payload:
            raise InvalidInput("telemetry.empty", "the payload is empty")
        if len(payload) > MAX_PAYLOAD:
            raise InvalidInput("telemetry.too_large", f"a payload is at most {MAX_PAYLOAD} bytes")
        if not 0 < len(signature) <= MAX_SIGNATURE:
            raise InvalidInput("telemetry.bad_signature", "the signature does not verify")
        with self._db.transaction() as session:
            repo = TelemetryRepository(session)
            device = repo.device_key(ctx.uid)
            if device is None:
                raise Forbidden("device.not_allowed", "this device is not registered")
            if device.state not in _ALLOWED:
                raise Forbidden(
                    "device.not_allowed", f"a device that is {device.state.value} may not send"
                )
            if device.identity_spki is None:
                raise Conflict("device.no_identity_key", "the registry has no identity key yet")
            if not verify_identity_signature(device.identity_spki, payload, signature):
                raise InvalidInput(
                    "telemetry.bad_signature",
                    "the signature does not verify with the device's current identity key",
                )
            row = repo.add(
                Telemetry(
                    device_id=device.id,
                    key_epoch=device.key_epoch,
                    payload=payload,
                    signature=signature,
                    received_at=self._clock(),
                )
            )
            return row.id

    def list(self, uid: str, limit: int = 100) -> builtins.list[TelemetryView]:
        """The newest ``limit`` payloads of ``uid``, newest first."""
        if not 1 <= limit <= MAX_LIST:
            raise InvalidInput("page.bad_limit", f"limit must be between 1 and {MAX_LIST}")
        key = normalize_uid(uid)
        with self._db.transaction(write=False) as session:
            repo = TelemetryRepository(session)
            device = repo.device_key(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            return [
                TelemetryView(r.id, key, r.key_epoch, r.payload, r.signature, r.received_at)
                for r in repo.newest(device.id, limit)
            ]

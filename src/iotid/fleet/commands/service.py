"""The commands slice's rules: encrypt an operator's command to the device's identity key, let the
device fetch and acknowledge its own commands.

Scope: :class:`CommandService`. :meth:`~CommandService.create` locks the device row, encrypts the
plaintext at once with ``iotid.crypto.ecies.encrypt_for`` to the registry's CURRENT identity key
(ECIES for EC keys, the RSA-OAEP hybrid for RSA; no associated data) and stores the blob with
that key's epoch, with a ``command.created`` audit entry that carries public facts only (id,
epoch, sizes, the blob's SHA-256; never the plaintext). The plaintext is not kept anywhere.
:meth:`~CommandService.pending` and :meth:`~CommandService.ack` act for the device a gateway
request authenticated: a command of another device is NotFound, exactly like a missing one.

Not in scope: SQL (``repository``), HTTP (``api``, ``gateway``), decryption (the card's
DECRYPT through ``RotationSession.decrypt(epoch, blob)``), what a command means.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotid.crypto.ecies import encrypt_for
from iotid.fleet.commands.repository import CommandRepository
from iotid.fleet.db import Database
from iotid.fleet.devices.repository import DeviceRepository
from iotid.fleet.devices.service import normalize_uid
from iotid.fleet.errors import Conflict, InvalidInput, NotFound
from iotid.fleet.models import AuditLog, Command, DeviceState, utcnow

__all__ = ["MAX_PENDING", "MAX_PLAINTEXT", "CommandService", "CommandView", "CreatedCommand"]

#: Largest command plaintext (bytes).
MAX_PLAINTEXT = 64 * 1024
#: Most undelivered commands returned in one fetch (the oldest first).
MAX_PENDING = 100
#: Devices that can receive commands: their identity key and epoch are the card's.
_ADDRESSABLE = frozenset({DeviceState.ENROLLED, DeviceState.ACTIVE, DeviceState.ROTATING})


@dataclass(frozen=True)
class CreatedCommand:
    id: int
    epoch: int


@dataclass(frozen=True)
class CommandView:
    id: int
    epoch: int
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"CommandView(id={self.id}, epoch={self.epoch}, bytes={len(self.ciphertext)})"


class CommandService:
    """Encrypted commands of one fleet."""

    def __init__(self, db: Database, *, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    def create(self, uid: str, plaintext: bytes, *, actor: str) -> CreatedCommand:
        """Encrypt ``plaintext`` to the device's current identity key and queue it."""
        if not plaintext:
            raise InvalidInput("command.empty", "the command is empty")
        if len(plaintext) > MAX_PLAINTEXT:
            raise InvalidInput("command.too_large", f"a command is at most {MAX_PLAINTEXT} bytes")
        key = normalize_uid(uid)
        with self._db.transaction() as session:
            device = DeviceRepository(session).lock_device(key)
            if device is None:
                raise NotFound("device.not_found", f"no device {key}")
            state = DeviceState(device.state)
            if state not in _ADDRESSABLE:
                raise Conflict(
                    "device.wrong_state", f"device {key} is {state.value}: it takes no commands"
                )
            if device.identity_spki is None:
                raise Conflict("device.no_identity_key", f"device {key} has no identity key yet")
            public_key = serialization.load_der_public_key(device.identity_spki)
            if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                raise Conflict("device.no_identity_key", "unsupported identity key type")
            blob = encrypt_for(public_key, plaintext)
            now = self._clock()
            command = CommandRepository(session).add(
                Command(
                    device_id=device.id,
                    key_epoch=device.key_epoch,
                    ciphertext=blob,
                    created_by=actor,
                    created_at=now,
                )
            )
            AuditLog(session).append(
                actor=actor,
                action="command.created",
                subject=f"device:{key}",
                details={
                    "command_id": command.id,
                    "epoch": device.key_epoch,
                    "ciphertext_size": len(blob),
                    "ciphertext_sha256": hashlib.sha256(blob).hexdigest(),
                },
                now=now,
            )
            return CreatedCommand(command.id, device.key_epoch)

    def pending(self, uid: str, limit: int = MAX_PENDING) -> list[CommandView]:
        """The undelivered commands of ``uid``, oldest first."""
        key = normalize_uid(uid)
        with self._db.transaction(write=False) as session:
            repo = CommandRepository(session)
            device_id = repo.device_id(key)
            if device_id is None:
                raise NotFound("device.not_found", f"no device {key}")
            return [
                CommandView(c.id, c.key_epoch, c.ciphertext)
                for c in repo.undelivered(device_id, min(limit, MAX_PENDING))
            ]

    def ack(self, uid: str, command_id: int) -> int:
        """Mark command ``command_id`` of device ``uid`` delivered (idempotent); returns the id.

        Another device's command is NotFound, like one that does not exist.
        """
        key = normalize_uid(uid)
        with self._db.transaction() as session:
            repo = CommandRepository(session)
            device_id = repo.device_id(key)
            command = None if device_id is None else repo.lock_command(device_id, command_id)
            if command is None:
                raise NotFound("command.not_found", f"no command {command_id} for this device")
            if command.delivered_at is None:
                command.delivered_at = self._clock()
            return command.id

"""Host session of the key rotation applet, and the fleet-side helpers of the protocol.

Scope: :class:`RotationSession` (one method per command of ``iotid.spec.rotation``, typed
results, typed errors for the status words it understands, :class:`~iotid.apdu.ApduError` for the
rest), :class:`RotationProof` with the check a fleet runs on it, the to-be-signed builders the
fleet signs (re-exported from ``iotid.spec.rotation``), and :func:`perso_dgis` for the
personalisation routine.

Not covered: signing acknowledgements (the fleet holds the rotation-authority key; the signature
rule is in ``iotid.spec.rotation``), encrypting data to a device key (``iotid.crypto.ecies``),
transports and secure messaging (``iotid.host.protocol``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotid.apdu import ApduError, ApduFormatError, parse_tlvs
from iotid.crypto import identity_rule
from iotid.host.errors import BadResponseError, HostError
from iotid.host.protocol import SmartCardProtocol
from iotid.spec import rotation as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.identity import CLA_IOTID
from iotid.spec.iso7816 import SW
from iotid.spec.rotation import ack_tbs, purge_tbs, rotation_tbs

__all__ = [
    "AuthorisationRejectedError",
    "DecryptionFailedError",
    "InvalidProofError",
    "NoPendingRotationError",
    "RotationError",
    "RotationProof",
    "RotationSession",
    "RotationState",
    "RotationUnavailableError",
    "UnknownEpochError",
    "ack_tbs",
    "perso_dgis",
    "purge_tbs",
    "rotation_tbs",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
_MAX_P1P2_EPOCH = 0xFFFF


# -- errors ---------------------------------------------------------------------------------------
class RotationError(HostError):
    """Base of the rotation session's typed errors; ``sw`` is the card's status word (0 if the
    error was found on the host)."""

    def __init__(self, message: str, sw: int = 0) -> None:
        super().__init__(message)
        self.sw = sw


class RotationUnavailableError(RotationError):
    """6985: the applet is not personalised, or no identity key is active."""


class NoPendingRotationError(RotationUnavailableError):
    """6985 to COMMIT or ABORT: no rotation awaits a commit (or the applet is not usable)."""


class AuthorisationRejectedError(RotationError):
    """6982: the acknowledgement or purge authorisation is absent or does not verify."""


class UnknownEpochError(RotationError):
    """6A88: to DECRYPT, neither the current epoch nor a retained retired one; to PURGE, no
    retired key of that epoch (never retired, the active one, or destroyed)."""


class DecryptionFailedError(RotationError):
    """6A80 to DECRYPT: the blob is malformed, for another key, or not authentic."""


class InvalidProofError(RotationError):
    """The proof of continuity does not verify with the old public key."""


# -- results --------------------------------------------------------------------------------------
def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _verify(key: PublicKey, signature: bytes, message: bytes) -> bool:
    """The signature rule of ``iotid.spec.rotation`` (``iotid.crypto.identity_rule``)."""
    return identity_rule.verify(key, signature, message)


@dataclass(frozen=True)
class RotationProof:
    """ROTATE's answer: the pending key for ``epoch`` and the old key's signature over it."""

    epoch: int
    public_key_der: bytes = field(repr=False)  # SubjectPublicKeyInfo DER
    signature: bytes = field(repr=False)
    nonce: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"RotationProof(epoch={self.epoch}, key=<{len(self.public_key_der)} bytes>)"

    @property
    def public_key(self) -> PublicKey:
        key = serialization.load_der_public_key(self.public_key_der)
        if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise BadResponseError("the new key is neither EC nor RSA")
        return key

    def tbs(self, uid: bytes) -> bytes:
        """The bytes the old key signed (``iotid.spec.rotation.rotation_tbs``)."""
        return rotation_tbs(uid, self.epoch, self.public_key_der, self.nonce)

    def ack_tbs(self, uid: bytes) -> bytes:
        """The bytes the rotation authority signs to acknowledge this proof."""
        return ack_tbs(uid, self.epoch, self.public_key_der, self.nonce)

    def verify(self, old_public_key: PublicKey, uid: bytes) -> None:
        """Raise :class:`InvalidProofError` unless the old key signed this key, epoch and nonce
        for this UID."""
        if not _verify(old_public_key, self.signature, self.tbs(uid)):
            raise InvalidProofError("the proof of continuity does not verify")


@dataclass(frozen=True)
class RotationState:
    """GET STATE's answer."""

    epoch: int
    pending: bool
    retired_epochs: tuple[int, ...]
    retention: int
    alg: KeyAlg | None


# -- personalisation ------------------------------------------------------------------------------
def perso_dgis(authority_public_key: PublicKey, retention: int) -> list[tuple[int, bytes]]:
    """DGIs 0501 (rotation-authority SPKI DER) and 0502 (retention, u16) for STORE DATA."""
    if not 0 <= retention < 1 << (8 * spec.RETENTION_LEN):
        raise ValueError("retention is a u16")
    return [
        (spec.Dgi.AUTHORITY_KEY, _spki(authority_public_key)),
        (spec.Dgi.RETENTION, retention.to_bytes(spec.RETENTION_LEN, "big")),
    ]


# -- session --------------------------------------------------------------------------------------
def _fields(data: bytes, *tags: spec.Tag) -> dict[int, bytes]:
    try:
        items = {t.tag: t.value for t in parse_tlvs(data)}
    except ApduFormatError:
        raise BadResponseError("malformed rotation applet answer") from None
    missing = [t for t in tags if t not in items]
    if missing:
        raise BadResponseError("rotation applet answer lacks a field")
    return items


def _epoch(value: bytes) -> int:
    if len(value) != spec.EPOCH_LEN:
        raise BadResponseError("bad epoch field")
    return int.from_bytes(value, "big")


class RotationSession:
    """Commands of the rotation applet over a :class:`SmartCardProtocol` (selects it)."""

    def __init__(self, protocol: SmartCardProtocol) -> None:
        self.protocol = protocol
        protocol.select(spec.AID)

    def __repr__(self) -> str:
        return "RotationSession()"

    def _send(
        self, ins: spec.Ins, data: bytes = b"", *, p1p2: int = 0, pending_op: bool = False
    ) -> bytes:
        le = 65536 if self.protocol.extended else 256
        try:
            return self.protocol.transmit(CLA_IOTID, ins, p1p2 >> 8, p1p2 & 0xFF, data, le)
        except ApduError as exc:
            sw = exc.sw
            if sw == SW.CONDITIONS_NOT_SATISFIED:
                if pending_op:
                    raise NoPendingRotationError("no rotation is pending", sw) from None
                raise RotationUnavailableError(
                    "rotation applet not personalised or no active identity key", sw
                ) from None
            if sw == SW.SECURITY_STATUS_NOT_SATISFIED:
                raise AuthorisationRejectedError("authorisation refused by the card", sw) from None
            if sw == SW.REFERENCED_DATA_NOT_FOUND and ins in (spec.Ins.DECRYPT, spec.Ins.PURGE):
                raise UnknownEpochError(f"no usable key for epoch {p1p2}", sw) from None
            if sw == SW.WRONG_DATA and ins == spec.Ins.DECRYPT:
                raise DecryptionFailedError("the card could not decrypt the blob", sw) from None
            raise

    def rotate(self, nonce: bytes) -> RotationProof:
        """ROTATE: a pending key for epoch + 1 and its proof of continuity (replaces any earlier
        pending key). The nonce is the fleet's, 16..64 bytes (6700 otherwise)."""
        items = _fields(
            self._send(spec.Ins.ROTATE, nonce),
            spec.Tag.EPOCH,
            spec.Tag.PUBLIC_KEY,
            spec.Tag.SIGNATURE,
        )
        return RotationProof(
            _epoch(items[spec.Tag.EPOCH]),
            items[spec.Tag.PUBLIC_KEY],
            items[spec.Tag.SIGNATURE],
            bytes(nonce),
        )

    def commit(self, ack: bytes) -> int:
        """COMMIT with the authority's acknowledgement; returns the new epoch."""
        items = _fields(self._send(spec.Ins.COMMIT, ack, pending_op=True), spec.Tag.EPOCH)
        return _epoch(items[spec.Tag.EPOCH])

    def abort(self) -> None:
        """ABORT: drop the pending key (NoPendingRotationError if there is none)."""
        self._send(spec.Ins.ABORT, pending_op=True)

    def state(self) -> RotationState:
        items = _fields(
            self._send(spec.Ins.GET_STATE),
            spec.Tag.EPOCH,
            spec.Tag.PENDING,
            spec.Tag.RETIRED_EPOCHS,
            spec.Tag.RETENTION,
            spec.Tag.ALGORITHM,
        )
        retired = items[spec.Tag.RETIRED_EPOCHS]
        if len(retired) % spec.EPOCH_LEN or len(items[spec.Tag.RETENTION]) != spec.RETENTION_LEN:
            raise BadResponseError("bad GET STATE answer")
        alg_raw = items[spec.Tag.ALGORITHM]
        try:
            alg = KeyAlg(alg_raw[0]) if len(alg_raw) == 1 else None
        except ValueError:
            raise BadResponseError("unknown algorithm in GET STATE") from None
        return RotationState(
            epoch=_epoch(items[spec.Tag.EPOCH]),
            pending=items[spec.Tag.PENDING] == b"\x01",
            retired_epochs=tuple(
                int.from_bytes(retired[i : i + spec.EPOCH_LEN], "big")
                for i in range(0, len(retired), spec.EPOCH_LEN)
            ),
            retention=int.from_bytes(items[spec.Tag.RETENTION], "big"),
            alg=alg,
        )

    def decrypt(self, epoch: int, blob: bytes) -> bytes:
        """DECRYPT a blob made with no associated data (``iotid.crypto.ecies``): with the
        active key when ``epoch`` is the current epoch (what the fleet encrypts its commands
        to), else with the retained retired key of ``epoch``. :class:`UnknownEpochError` (6A88)
        when ``epoch`` is neither; :class:`DecryptionFailedError` (6A80) for every failure."""
        return self._send(spec.Ins.DECRYPT, blob, p1p2=_p1p2_epoch(epoch))

    def purge(self, epoch: int, signature: bytes) -> None:
        """PURGE: zeroise the retired key of ``epoch``; ``signature`` is the authority's over
        :func:`purge_tbs`."""
        self._send(spec.Ins.PURGE, signature, p1p2=_p1p2_epoch(epoch))


def _p1p2_epoch(epoch: int) -> int:
    if not 0 < epoch <= _MAX_P1P2_EPOCH:
        raise ValueError("an epoch is addressed in P1/P2: 1..65535")
    return epoch

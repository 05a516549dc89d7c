"""Host session of the signed-firmware applet (DESIGN.md sections 6.4 and 8) and the bootloader's
API on top of it.

Scope: :class:`FirmwareSession` (BEGIN, UPDATE, FINISH, CONFIRM, GET STATE; 6985 becomes a typed
error, any other status word is re-raised as :class:`~iotid.apdu.ApduError`); the bootloader API
:func:`verify_image` / :meth:`FirmwareSession.verify_image`, which streams a file or stream to
the card in chunks (extended APDUs of up to 65535 bytes when the protocol is extended, else
short APDUs of 255) and is fail-safe: any error (status word, transport error, malformed or
inconsistent answer, unreadable file) yields ``Verdict(valid=False, reason="error: ...")``,
never VALID; :func:`confirm` after the new firmware booted; :func:`perso_dgis` for the
personalisation routine.

Raw mode (an image plus a detached signature): pass ``signature``, either a detached signature
file (:class:`~iotid.spec.firmware.RawSignature`: it names hash algorithm, version and security
counter) or a bare signature together with ``version`` and ``security_counter``. The signature
covers :func:`~iotid.spec.firmware.raw_statement` (:func:`iotid.crypto.firmware_raw.sign_raw_image`
makes it).

The bootloader must apply exactly the bytes it verified (verify the staged slot, not a file that
can change afterwards). Not covered: the wire vocabulary (``iotid.spec.firmware``), the rules of
verification (``iotid.crypto.mcuboot``), retry policy (the SecureElement facade).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from iotid.apdu import ApduError, ApduFormatError, parse_tlvs, tlv
from iotid.crypto.mcuboot import ImageVersion, PublicKey, TrustedKey
from iotid.host.errors import BadResponseError, HostError
from iotid.host.protocol import SmartCardProtocol
from iotid.spec import firmware as spec
from iotid.spec.firmware import (
    Dgi,
    HashAlg,
    Ins,
    Mode,
    RawSignature,
    Reason,
    Tag,
    VerdictCode,
)
from iotid.spec.identity import CLA_IOTID
from iotid.spec.iso7816 import EXTENDED_MAX_DATA, SHORT_MAX_DATA, SW
from iotid.transport.base import Connection

__all__ = [
    "ConfirmRefusedError",
    "FirmwareError",
    "FirmwareSession",
    "FirmwareState",
    "FirmwareStateError",
    "ImageSource",
    "PublicKey",
    "Verdict",
    "confirm",
    "perso_dgis",
    "verify_image",
]

ImageSource = str | os.PathLike[str] | BinaryIO
_U32_MAX = 0xFFFF_FFFF
_VERDICT_TAGS = frozenset(
    {Tag.VERDICT, Tag.REASON, Tag.VERSION, Tag.SECURITY_COUNTER, Tag.HASH_ALG, Tag.IMAGE_HASH}
)


class FirmwareError(HostError):
    """Base of the firmware applet's typed errors; ``sw`` is the card's status word."""

    def __init__(self, message: str, sw: int) -> None:
        super().__init__(message)
        self.sw = sw


class FirmwareStateError(FirmwareError):
    """6985: the applet is not personalised, or no verification session is open."""


class ConfirmRefusedError(FirmwareStateError):
    """CONFIRM refused (6985): the last verdict is not VALID or its security counter is not
    above the floor (or the applet is not personalised). The floor did not change."""


@dataclass(frozen=True)
class Verdict:
    """A verification outcome as the bootloader sees it. ``reason`` is a :class:`Reason` label
    (``ok``, ``hash-mismatch``, ...) or ``error: ...`` when the verification could not run."""

    valid: bool
    reason: str
    code: Reason | None = None
    version: ImageVersion | None = None
    security_counter: int | None = None
    hash_alg: HashAlg | None = None
    image_hash: bytes | None = None

    @classmethod
    def failure(cls, what: str) -> Verdict:
        return cls(False, f"error: {what}")

    @property
    def error(self) -> bool:
        """True when no verdict could be obtained (the CLI's exit status 2)."""
        return self.code is None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "valid": self.valid,
            "reason": self.reason,
            "version": None if self.version is None else str(self.version),
            "security_counter": self.security_counter,
            "hash_alg": None if self.hash_alg is None else self.hash_alg.name.lower(),
            "image_hash": None if self.image_hash is None else self.image_hash.hex(),
        }


@dataclass(frozen=True)
class FirmwareState:
    """GET STATE: the anti-rollback floor, the number of issuance keys, the open session's mode
    (None: none) and the last verdict the card recorded."""

    floor: int
    key_count: int
    session: Mode | None
    last_verdict: Verdict | None


def _fields(data: bytes, allowed: frozenset[Tag]) -> dict[int, bytes]:
    try:
        items = parse_tlvs(data)
    except ApduFormatError as exc:
        raise BadResponseError(f"malformed response: {exc}") from None
    fields = {t.tag: t.value for t in items}
    if len(fields) != len(items) or not set(fields) <= allowed:
        raise BadResponseError("unexpected or repeated tags in the response")
    return fields


def _u32(raw: bytes | None, what: str) -> int:
    if raw is None or len(raw) != 4:
        raise BadResponseError(f"{what}: expected 4 bytes")
    return int.from_bytes(raw, "big")


def parse_verdict(data: bytes) -> Verdict:
    """Decode the verdict TLVs strictly; BadResponseError on anything inconsistent."""
    f = _fields(data, _VERDICT_TAGS)
    code, reason = f.get(Tag.VERDICT), f.get(Tag.REASON)
    if code is None or reason is None or len(code) != 1 or len(reason) != 1:
        raise BadResponseError("verdict without its code and reason")
    try:
        verdict_code, why = VerdictCode(code[0]), Reason(reason[0])
    except ValueError:
        raise BadResponseError("unknown verdict code or reason") from None
    valid = verdict_code is VerdictCode.VALID
    if valid != (why is Reason.OK):
        raise BadResponseError("verdict code and reason disagree")
    try:
        version = None if Tag.VERSION not in f else ImageVersion.decode(f[Tag.VERSION])
        hash_alg = None if Tag.HASH_ALG not in f else HashAlg(f[Tag.HASH_ALG][0])
    except (ValueError, IndexError):
        raise BadResponseError("malformed version or hash algorithm") from None
    counter = None if Tag.SECURITY_COUNTER not in f else _u32(f[Tag.SECURITY_COUNTER], "counter")
    image_hash = f.get(Tag.IMAGE_HASH)
    if (hash_alg is None) != (image_hash is None) or (
        hash_alg is not None and image_hash is not None and len(image_hash) != hash_alg.digest_size
    ):
        raise BadResponseError("image hash and hash algorithm disagree")
    if valid and (version is None or counter is None or image_hash is None):
        raise BadResponseError("a VALID verdict must carry version, counter and hash")
    return Verdict(valid, why.label, why, version, counter, hash_alg, image_hash)


class FirmwareSession:
    """The firmware applet, as seen from the host."""

    def __init__(self, protocol: SmartCardProtocol) -> None:
        self.protocol = protocol
        protocol.select(spec.AID)

    def __repr__(self) -> str:
        return f"FirmwareSession(extended={self.protocol.extended})"

    @property
    def default_chunk(self) -> int:
        """UPDATE size: a whole extended APDU, or a whole short one (no chaining)."""
        return EXTENDED_MAX_DATA if self.protocol.extended else SHORT_MAX_DATA

    def _send(self, ins: Ins, data: bytes = b"", *, p1: int = spec.P1P2_NONE) -> bytes:
        try:
            return self.protocol.transmit(CLA_IOTID, ins, p1, spec.P1P2_NONE, data)
        except ApduError as exc:
            if exc.sw == SW.CONDITIONS_NOT_SATISFIED:
                error = ConfirmRefusedError if ins == Ins.CONFIRM else FirmwareStateError
                raise error(f"{ins.name} refused: conditions not satisfied", exc.sw) from None
            raise

    # -- commands -------------------------------------------------------------------------------
    def begin(self) -> None:
        """Open a session for an MCUboot image."""
        self._send(Ins.BEGIN, p1=Mode.MCUBOOT)

    def begin_raw(
        self,
        *,
        length: int,
        version: ImageVersion,
        security_counter: int,
        hash_alg: HashAlg = HashAlg.SHA256,
    ) -> None:
        """Open a session for a raw image of ``length`` bytes and a detached signature."""
        if not 0 <= length <= _U32_MAX or not 0 <= security_counter <= _U32_MAX:
            raise ValueError("length and security counter are u32")
        data = (
            tlv(Tag.HASH_ALG, bytes([hash_alg]))
            + tlv(Tag.IMAGE_LENGTH, length.to_bytes(4, "big"))
            + tlv(Tag.VERSION, version.encode())
            + tlv(Tag.SECURITY_COUNTER, security_counter.to_bytes(4, "big"))
        )
        self._send(Ins.BEGIN, data, p1=Mode.RAW)

    def update(self, chunk: bytes) -> None:
        """The next bytes of the image (1..65535)."""
        self._send(Ins.UPDATE, chunk)

    def finish(self, signature: bytes = b"") -> Verdict:
        """End the session; ``signature`` in raw mode only. The card's verdict."""
        return parse_verdict(self._send(Ins.FINISH, signature))

    def confirm(self) -> int:
        """Raise the floor to the last VALID image's security counter; returns the new floor."""
        return _u32(
            _fields(self._send(Ins.CONFIRM), frozenset({Tag.FLOOR})).get(Tag.FLOOR), "floor"
        )

    def state(self) -> FirmwareState:
        allowed = frozenset({Tag.FLOOR, Tag.KEY_COUNT, Tag.SESSION, Tag.LAST_VERDICT})
        f = _fields(self._send(Ins.GET_STATE), allowed)
        keys, session = f.get(Tag.KEY_COUNT), f.get(Tag.SESSION)
        if keys is None or session is None or len(keys) != 1 or len(session) != 1:
            raise BadResponseError("GET STATE without key count or session")
        try:
            mode = Mode(session[0]) if session[0] else None
        except ValueError:
            raise BadResponseError("unknown session mode") from None
        last = f.get(Tag.LAST_VERDICT)
        return FirmwareState(
            _u32(f.get(Tag.FLOOR), "floor"),
            keys[0],
            mode,
            None if last is None else parse_verdict(last),
        )

    # -- bootloader API -------------------------------------------------------------------------
    def verify_image(
        self,
        source: ImageSource,
        *,
        signature: bytes | None = None,
        version: ImageVersion | None = None,
        security_counter: int | None = None,
        hash_alg: HashAlg = HashAlg.SHA256,
        length: int | None = None,
        chunk: int | None = None,
    ) -> Verdict:
        """Stream ``source`` (a path or a binary stream, read from its current position) to the
        card and return its verdict. MCUboot mode unless ``signature`` is given (raw mode: a
        detached signature file, or a bare signature with ``version`` and ``security_counter``;
        ``length`` for an unseekable stream).
        Fail-safe: never raises, never VALID on an error."""
        try:
            size = chunk or self.default_chunk
            if not 1 <= size <= EXTENDED_MAX_DATA:
                raise ValueError(f"chunk must be 1..{EXTENDED_MAX_DATA}")
            if isinstance(source, str | os.PathLike):
                with open(source, "rb") as stream:
                    return self._stream(
                        stream, signature, version, security_counter, hash_alg, length, size
                    )
            return self._stream(
                source, signature, version, security_counter, hash_alg, length, size
            )
        except Exception as exc:  # fail-safe: whatever went wrong, the image is not VALID
            return Verdict.failure(_describe(exc))

    def _stream(
        self,
        stream: BinaryIO,
        signature: bytes | None,
        version: ImageVersion | None,
        security_counter: int | None,
        hash_alg: HashAlg,
        length: int | None,
        size: int,
    ) -> Verdict:
        if signature is None:
            self.begin()
        else:
            if version is None and security_counter is None:
                envelope = RawSignature.decode(signature)  # ValueError: not a signature file
                hash_alg, version = envelope.hash_alg, envelope.version
                security_counter, signature = envelope.security_counter, envelope.signature
            if version is None or security_counter is None:
                raise ValueError("raw mode needs version and security_counter")
            if length is None:
                length = _remaining(stream)
            self.begin_raw(
                length=length, version=version, security_counter=security_counter, hash_alg=hash_alg
            )
        while block := stream.read(size):
            self.update(block)
        verdict = self.finish(signature or b"")
        if (
            verdict.valid
            and signature is not None
            and (verdict.version != version or verdict.security_counter != security_counter)
        ):
            raise BadResponseError("the card's verdict does not match the raw image's metadata")
        return verdict


def _remaining(stream: BinaryIO) -> int:
    if not stream.seekable():
        raise ValueError("raw mode on an unseekable stream needs length")
    here = stream.tell()
    end = stream.seek(0, os.SEEK_END)
    stream.seek(here)
    return end - here


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApduError):
        return f"card answered {SW.describe(exc.sw)}"
    if isinstance(exc, FirmwareError):
        return f"{exc} ({exc.sw:04X})"
    return f"{type(exc).__name__}: {exc}"


def _protocol(target: SmartCardProtocol | Connection, extended: bool | None) -> SmartCardProtocol:
    if isinstance(target, SmartCardProtocol):
        if extended is not None and extended != target.extended:
            raise ValueError("extended must match the protocol's (or be None)")
        return target
    return SmartCardProtocol(target, extended=bool(extended))


def verify_image(
    target: SmartCardProtocol | Connection,
    source: ImageSource,
    *,
    signature: bytes | None = None,
    version: ImageVersion | None = None,
    security_counter: int | None = None,
    hash_alg: HashAlg = HashAlg.SHA256,
    length: int | None = None,
    chunk: int | None = None,
    extended: bool | None = None,
) -> Verdict:
    """The bootloader's call: select the applet and verify ``source`` (see
    :meth:`FirmwareSession.verify_image`). ``extended`` chooses the APDU encoding when
    ``target`` is a bare connection. Fail-safe: never raises, never VALID on an error."""
    try:
        session = FirmwareSession(_protocol(target, extended))
    except Exception as exc:  # fail-safe
        return Verdict.failure(_describe(exc))
    return session.verify_image(
        source,
        signature=signature,
        version=version,
        security_counter=security_counter,
        hash_alg=hash_alg,
        length=length,
        chunk=chunk,
    )


def confirm(target: SmartCardProtocol | Connection, *, extended: bool | None = None) -> int:
    """After the new firmware booted: raise the floor to its security counter; the new floor.
    Raises :class:`ConfirmRefusedError` when there is nothing to confirm."""
    return FirmwareSession(_protocol(target, extended)).confirm()


def perso_dgis(keys: Sequence[PublicKey], floor: int = 0) -> list[tuple[int, bytes]]:
    """Personalisation DGIs: each issuance public key (SPKI DER, 1..4 of them, EC P-256/P-384 or
    RSA-2048/3072), then the anti-rollback floor (u32)."""
    if not 1 <= len(keys) <= spec.MAX_KEYS:
        raise ValueError(f"1..{spec.MAX_KEYS} firmware issuance keys")
    if not 0 <= floor <= _U32_MAX:
        raise ValueError("the floor is a u32")
    spkis = [TrustedKey(k).spki for k in keys]
    if len(set(spkis)) != len(spkis):
        raise ValueError("duplicate firmware issuance key")
    out: list[tuple[int, bytes]] = [(Dgi.ISSUANCE_KEY, s) for s in spkis]
    out.append((Dgi.ROLLBACK_FLOOR, floor.to_bytes(4, "big")))
    return out

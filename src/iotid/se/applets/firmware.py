"""The signed-firmware applet (DESIGN.md sections 6.4 and 8): streaming image verification inside
the card, and the anti-rollback floor.

Scope: personalisation (issuance public keys, floor; ``iotid.spec.firmware.Dgi``), BEGIN, UPDATE,
FINISH, CONFIRM and GET STATE (wire contract in ``iotid.spec.firmware``). A verification session
lives in RAM only (this object): the hash state and the header/TLV bytes of the image, never its
body, and never in NVM; power loss, reset, a SELECT or a new BEGIN ends it. FINISH records the
verdict in NVM (the *last verdict*) so that CONFIRM still finds it after the device rebooted into
the new firmware. The floor lives in one NVM record,
:data:`~iotid.spec.identity.SHARED_FIRMWARE_FLOOR_RECORD` (u32 big endian), which the
attestation applet reads; CONFIRM raises it in one APDU, so one NVM transaction: after a power
cut it holds the old value or the new one.

Debug: :attr:`FirmwareApplet.transient_buffer_size` and
:attr:`FirmwareApplet.transient_buffer_peak` report the bytes the session holds (tests prove the
body is never buffered).

Not covered: the image format rules themselves (``iotid.crypto.mcuboot``), the host side
(``iotid.host.firmware``), booting the image (the bootloader's job).
"""

from __future__ import annotations

from iotid.apdu import ApduError, ApduFormatError, CommandApdu, parse_tlvs, tlv
from iotid.crypto.firmware_raw import RawVerifier
from iotid.crypto.mcuboot import ImageVerdict, ImageVersion, McubootVerifier, TrustedKey
from iotid.se.applet import Applet, AppletContext, ClaClass, handles
from iotid.spec import firmware as spec
from iotid.spec.firmware import Dgi, HashAlg, Ins, Mode, Tag, VerdictCode
from iotid.spec.gp import APP_LOCKED_BIT
from iotid.spec.identity import APP_PERSONALISED, ELF_AID, SHARED_FIRMWARE_FLOOR_RECORD
from iotid.spec.iso7816 import SW

_KEY = "key/{}"
_LAST = "last-verdict"
_RAW_BEGIN_TAGS = {
    Tag.HASH_ALG: 1,
    Tag.IMAGE_LENGTH: 4,
    Tag.VERSION: spec.VERSION_LEN,
    Tag.SECURITY_COUNTER: 4,
}


def encode_verdict(verdict: ImageVerdict) -> bytes:
    """The verdict TLVs (FINISH response, the last-verdict record, GET STATE's B0)."""
    code = VerdictCode.VALID if verdict.valid else VerdictCode.INVALID
    out = tlv(Tag.VERDICT, bytes([code])) + tlv(Tag.REASON, bytes([verdict.reason]))
    if verdict.version is not None:
        out += tlv(Tag.VERSION, verdict.version.encode())
    if verdict.security_counter is not None:
        out += tlv(Tag.SECURITY_COUNTER, verdict.security_counter.to_bytes(4, "big"))
    if verdict.hash_alg is not None and verdict.image_hash is not None:
        out += tlv(Tag.HASH_ALG, bytes([verdict.hash_alg])) + tlv(
            Tag.IMAGE_HASH, verdict.image_hash
        )
    return out


class FirmwareApplet(Applet):
    """Card side of the signed-firmware applet."""

    AID = spec.AID
    NAME = "firmware"
    ELF_AID = ELF_AID
    INITIAL_LIFE_CYCLE = 0x07  # SELECTABLE

    def __init__(self, ctx: AppletContext) -> None:
        super().__init__(ctx)
        # Transient (RAM) state: the open session and its mode; the keys parsed once.
        self._session: McubootVerifier | RawVerifier | None = None
        self._peak = 0
        self._trusted: tuple[TrustedKey, ...] | None = None
        # The life cycle seen at SELECT: nothing can change it while this applet stays selected
        # (the ISD, which could, is another application on the one basic channel).
        self._selected_personalised: bool | None = None

    # -- debug ----------------------------------------------------------------------------------
    @property
    def transient_buffer_size(self) -> int:
        """Bytes of the image the open session holds now (header and TLV areas only)."""
        return 0 if self._session is None else self._session.buffered

    @property
    def transient_buffer_peak(self) -> int:
        """Largest ``transient_buffer_size`` of the current or last session."""
        if self._session is not None:
            self._peak = max(self._peak, self._session.peak_buffered)
        return self._peak

    # -- life cycle -----------------------------------------------------------------------------
    def on_select(self) -> bytes:
        self._abort()
        self._selected_personalised = None
        return b""

    def on_deselect(self) -> None:
        self._abort()
        self._selected_personalised = None

    def _abort(self) -> None:
        if self._session is not None:  # keep the peak of the session that ends
            self._peak = max(self._peak, self._session.peak_buffered)
        self._session = None

    # -- persistent state -----------------------------------------------------------------------
    def _personalised(self) -> bool:
        life_cycle = self.ctx.services.app_life_cycle(self.AID) & ~APP_LOCKED_BIT
        return life_cycle == APP_PERSONALISED

    def _key_records(self) -> list[bytes]:
        out = []
        for n in range(spec.MAX_KEYS):
            raw = self.load(_KEY.format(n))
            if raw is None:
                break
            out.append(raw)
        return out

    def _keys(self) -> tuple[TrustedKey, ...]:
        if self._trusted is None:
            try:
                self._trusted = tuple(TrustedKey.from_spki(r) for r in self._key_records())
            except ValueError:
                raise ApduError(SW.MEMORY_FAILURE) from None
        if not self._trusted:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        return self._trusted

    def _floor(self) -> int:
        raw = self.ctx.nvm.get(SHARED_FIRMWARE_FLOOR_RECORD)
        if raw is None or len(raw) != 4:
            raise ApduError(SW.MEMORY_FAILURE)
        return int.from_bytes(raw, "big")

    def _operational_ready(self) -> bool:
        """``_personalised()``, read once per selection (UPDATE runs thousands of times)."""
        if self._selected_personalised is None:
            self._selected_personalised = self._personalised()
        return self._selected_personalised

    def _operational(self, cmd: CommandApdu, *, data: bool | None = False) -> None:
        """Personalised (6985), P1/P2 (6A86), data present or absent (6700; None: either)."""
        if not self._operational_ready():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if cmd.p1 != spec.P1P2_NONE or cmd.p2 != spec.P1P2_NONE:
            raise ApduError(SW.INCORRECT_P1P2)
        if data is not None and bool(cmd.data) != data:
            raise ApduError(SW.WRONG_LENGTH)

    # -- personalisation (GPC 2.3.1 section 11.11, STORE DATA through the ISD) -----------------
    def store_data(self, dgi: int, value: bytes) -> None:
        if self._personalised():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if dgi == Dgi.ISSUANCE_KEY:
            try:
                TrustedKey.from_spki(value)
            except ValueError:
                raise ApduError(SW.WRONG_DATA) from None
            held = self._key_records()
            if value in held:
                raise ApduError(SW.WRONG_DATA)
            if len(held) >= spec.MAX_KEYS:
                raise ApduError(SW.NOT_ENOUGH_MEMORY)
            self.store(_KEY.format(len(held)), value)
        elif dgi == Dgi.ROLLBACK_FLOOR:
            if len(value) != 4:
                raise ApduError(SW.WRONG_LENGTH)
            if self.ctx.nvm.get(SHARED_FIRMWARE_FLOOR_RECORD) is not None:
                raise ApduError(SW.WRONG_DATA)  # at most once
            self.ctx.nvm.put(SHARED_FIRMWARE_FLOOR_RECORD, value)
        else:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)

    def end_personalisation(self) -> None:
        if self._personalised() or not self._key_records():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if self.ctx.nvm.get(SHARED_FIRMWARE_FLOOR_RECORD) is None:
            self.ctx.nvm.put(SHARED_FIRMWARE_FLOOR_RECORD, bytes(4))
        self.ctx.services.set_app_life_cycle(self.AID, APP_PERSONALISED)

    # -- BEGIN ----------------------------------------------------------------------------------
    @handles(Ins.BEGIN, cla=ClaClass.PROPRIETARY)
    def begin(self, cmd: CommandApdu) -> bytes:
        if not self._operational_ready():
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if cmd.p2 != spec.P1P2_NONE or cmd.p1 not in tuple(Mode):
            raise ApduError(SW.INCORRECT_P1P2)
        keys = self._keys()
        session: McubootVerifier | RawVerifier
        if cmd.p1 == Mode.MCUBOOT:
            if cmd.data:
                raise ApduError(SW.WRONG_LENGTH)
            session = McubootVerifier(keys)
        else:
            session = self._raw_session(keys, cmd.data)
        self._abort()
        self._session, self._peak = session, 0
        return b""

    @staticmethod
    def _raw_session(keys: tuple[TrustedKey, ...], data: bytes) -> RawVerifier:
        try:
            items = parse_tlvs(data)
        except ApduFormatError:
            raise ApduError(SW.WRONG_DATA) from None
        fields = {t.tag: t.value for t in items}
        if len(fields) != len(items) or set(fields) != set(_RAW_BEGIN_TAGS):
            raise ApduError(SW.WRONG_DATA)
        if any(len(fields[tag]) != size for tag, size in _RAW_BEGIN_TAGS.items()):
            raise ApduError(SW.WRONG_DATA)
        if fields[Tag.HASH_ALG][0] not in tuple(HashAlg):
            raise ApduError(SW.WRONG_DATA)
        return RawVerifier(
            keys,
            hash_alg=HashAlg(fields[Tag.HASH_ALG][0]),
            length=int.from_bytes(fields[Tag.IMAGE_LENGTH], "big"),
            version=ImageVersion.decode(fields[Tag.VERSION]),
            security_counter=int.from_bytes(fields[Tag.SECURITY_COUNTER], "big"),
        )

    # -- UPDATE ---------------------------------------------------------------------------------
    @handles(Ins.UPDATE, cla=ClaClass.PROPRIETARY)
    def update(self, cmd: CommandApdu) -> bytes:
        self._operational(cmd, data=None)
        if self._session is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if not cmd.data:
            raise ApduError(SW.WRONG_LENGTH)
        self._session.feed(cmd.data)
        return b""

    # -- FINISH ---------------------------------------------------------------------------------
    @handles(Ins.FINISH, cla=ClaClass.PROPRIETARY)
    def finish(self, cmd: CommandApdu) -> bytes:
        self._operational(cmd, data=None)
        session = self._session
        if session is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        floor = self._floor()
        if isinstance(session, McubootVerifier):
            if cmd.data:
                raise ApduError(SW.WRONG_LENGTH)
            verdict = session.finish(floor)
        else:
            if not 0 < len(cmd.data) <= spec.MAX_SIGNATURE_LEN:
                raise ApduError(SW.WRONG_LENGTH)
            verdict = session.finish(cmd.data, floor)
        self._abort()
        encoded = encode_verdict(verdict)
        self.store(_LAST, encoded)
        return encoded

    # -- CONFIRM --------------------------------------------------------------------------------
    @handles(Ins.CONFIRM, cla=ClaClass.PROPRIETARY)
    def confirm(self, cmd: CommandApdu) -> bytes:
        self._operational(cmd)
        last = self.load(_LAST)
        floor = self._floor()
        if last is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        try:
            fields = {t.tag: t.value for t in parse_tlvs(last)}
        except ApduFormatError:
            raise ApduError(SW.MEMORY_FAILURE) from None
        counter = fields.get(Tag.SECURITY_COUNTER)
        if fields.get(Tag.VERDICT) != bytes([VerdictCode.VALID]) or counter is None:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if int.from_bytes(counter, "big") <= floor:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        # One record, one APDU, one NVM transaction: old floor or new floor after a power cut.
        self.ctx.nvm.put(SHARED_FIRMWARE_FLOOR_RECORD, counter)
        return tlv(Tag.FLOOR, counter)

    # -- GET STATE ------------------------------------------------------------------------------
    @handles(Ins.GET_STATE, cla=ClaClass.PROPRIETARY)
    def get_state(self, cmd: CommandApdu) -> bytes:
        self._operational(cmd)
        session = 0
        if self._session is not None:
            session = Mode.MCUBOOT if isinstance(self._session, McubootVerifier) else Mode.RAW
        out = (
            tlv(Tag.FLOOR, self._floor().to_bytes(4, "big"))
            + tlv(Tag.KEY_COUNT, bytes([len(self._key_records())]))
            + tlv(Tag.SESSION, bytes([session]))
        )
        last = self.load(_LAST)
        if last is not None:
            out += tlv(Tag.LAST_VERDICT, last)
        return out

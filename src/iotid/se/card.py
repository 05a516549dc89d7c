"""The emulated secure element's card OS: ``Card.process(apdu: bytes) -> bytes``.

Scope: power and reset, ATR, APDU parsing, ISO command chaining (CLA b5) and 61xx GET RESPONSE,
the basic logical channel, SELECT by AID (full or partial, first/next), the GP registry, routing
through the security domain's secure channel, and the per-APDU NVM transaction: every command's
persistent writes commit together or not at all; an applet error (``ApduError``) or any
unexpected exception (answered ``6F00``) rolls them back.

Not in scope: transports (the card is a pure function of bytes), the ISD's commands
(``iotid.se.isd``), SCP03 cryptography (``iotid.scp03``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from iotid.apdu import ApduError, ApduFormatError, CommandApdu, ResponseApdu, chunk_response
from iotid.scp03 import StaticKeys
from iotid.se.applet import Applet, AppletContext, Reply
from iotid.se.applets import IDENTITY_APPLETS
from iotid.se.isd import IssuerSecurityDomain
from iotid.se.keysets import KeySets
from iotid.se.keystore import KeyStore
from iotid.se.nvm import Nvm, NvmError
from iotid.se.registry import Registry, RegistryEntry
from iotid.se.securechannel import SecureChannelService
from iotid.spec import gp
from iotid.spec.gp import CardLifeCycle, GpIns
from iotid.spec.iso7816 import (
    CLA_CHAINING,
    CLA_PROPRIETARY,
    CLA_SECURE_MESSAGING,
    EXTENDED_MAX_DATA,
    EXTENDED_MAX_LE,
    SELECT_BY_DF_NAME,
    SELECT_FIRST_OR_ONLY,
    SELECT_NEXT,
    SHORT_MAX_LE,
    SW,
    Ins,
)

log = logging.getLogger(__name__)

UID_LEN = 10
# ATR (ISO 7816-3): TS=3B, T0=88 (TD1 present, 8 historical bytes), TD1=01 (T=1), historical
# bytes 80 66 "iotid1" (category 80, compact TLV: pre-issuing data), TCK.
_ATR_BODY = bytes.fromhex("3B888001") + bytes.fromhex("8066") + b"iotid1"


def _atr() -> bytes:
    tck = 0
    for b in _ATR_BODY[1:]:
        tck ^= b
    return _ATR_BODY + bytes([tck])


ATR = _atr()

#: The applications a new card carries (ROM applications): the five identity applets.
DEFAULT_APPLETS: tuple[type[Applet], ...] = IDENTITY_APPLETS


def build_cplc(uid: bytes) -> bytes:
    """CPLC data (GP 2.3.1 Table H-?, 42 bytes). The UID is IC fabricator (2) || IC type (2) ||
    IC serial number (4) || IC batch identifier (2); the other fields are fixed or zero."""
    if len(uid) != UID_LEN:
        raise ValueError(f"UID is {UID_LEN} bytes")
    return (
        uid[0:2]  # IC fabricator
        + uid[2:4]  # IC type
        + b"\x49\x44"  # operating system identifier ("ID")
        + b"\x63\x28"  # operating system release date (YDDD)
        + b"\x01\x00"  # operating system release level
        + b"\x63\x28"  # IC fabrication date
        + uid[4:8]  # IC serial number
        + uid[8:10]  # IC batch identifier
        + bytes(24)  # module, embedding, pre-perso and perso fields
    )


@dataclass(frozen=True)
class CardInfo:
    """Public facts about a card (what ``iotid se info`` prints)."""

    uid: bytes
    life_cycle: int
    applications: tuple[tuple[bytes, str, int], ...]
    key_sets: tuple[tuple[int, int, bool], ...]  # (KVN, key length, is the GP test key set)


@dataclass
class _Chain:
    header: tuple[int, int, int, int]
    data: bytearray
    extended: bool


class Card:
    """The card: persistent state in NVM, transient state in this object."""

    def __init__(self, nvm: Nvm, applets: Sequence[type[Applet]] = DEFAULT_APPLETS) -> None:
        self._nvm = nvm
        self.keys = KeyStore(nvm)
        self._registry = Registry(nvm)
        uid = nvm.get("card/uid")
        if uid is None:
            raise NvmError("NVM holds no card identity")
        self._uid = uid
        self._keysets = KeySets(nvm, self.keys)
        self._channel = SecureChannelService(self._keysets, gp.ISD_AID, uid)
        ctx = AppletContext(nvm, self.keys, self)
        self._isd = IssuerSecurityDomain(ctx, self, self._keysets, self._channel)
        self._applets: dict[bytes, Applet] = {gp.ISD_AID: self._isd}
        for cls in applets:
            self._applets[cls.AID] = cls(ctx)
        self._selected: Applet | None = None
        self._chain: _Chain | None = None
        self._pending: tuple[bytes, int] | None = None
        self._powered = False

    def __repr__(self) -> str:
        return f"Card(uid={self._uid.hex().upper()}, life_cycle=0x{self.card_life_cycle:02x})"

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        state_dir: Path | None,
        *,
        uid: bytes | None = None,
        durable: bool = True,
        applets: Sequence[type[Applet]] = DEFAULT_APPLETS,
    ) -> Card:
        """A fresh card: OP_READY, the GP test key set (KVN 30), its ROM applications installed.

        ``state_dir=None`` keeps the NVM in memory.
        """
        uid = uid if uid is not None else secrets.token_bytes(UID_LEN)
        if len(uid) != UID_LEN:
            raise ValueError(f"UID must be {UID_LEN} bytes")
        nvm = Nvm.in_memory() if state_dir is None else Nvm.create(state_dir, durable=durable)
        with nvm.transaction():
            nvm.put("card/uid", uid)
            nvm.put("card/cplc", build_cplc(uid))
            registry = Registry(nvm)
            registry.put(
                RegistryEntry(
                    gp.ISD_AID, CardLifeCycle.OP_READY, IssuerSecurityDomain.PRIVILEGES, b""
                )
            )
            KeySets(nvm, KeyStore(nvm)).put(gp.TEST_KEY_VERSION, StaticKeys.gp_test_keys())
            for app in applets:
                registry.put(
                    RegistryEntry(app.AID, app.INITIAL_LIFE_CYCLE, app.PRIVILEGES, _elf_of(app))
                )
            card = cls(nvm, applets)
            for aid, applet in card._applets.items():
                if aid != gp.ISD_AID:
                    applet.on_install()
        return card

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        durable: bool = True,
        applets: Sequence[type[Applet]] = DEFAULT_APPLETS,
    ) -> Card:
        return cls(Nvm.open(state_dir, durable=durable), applets)

    # -- public facts -------------------------------------------------------------------------
    @property
    def uid(self) -> bytes:
        return self._uid

    @property
    def atr(self) -> bytes:
        return ATR

    @property
    def nvm(self) -> Nvm:
        return self._nvm

    def info(self) -> CardInfo:
        apps = tuple(
            (
                e.aid,
                type(self._applets[e.aid]).__name__ if e.aid in self._applets else "?",
                e.life_cycle,
            )
            for e in self._registry.entries()
        )
        sets = []
        for kvn in self._keysets.versions():
            keys = self._keysets.get(kvn)
            length = len(keys.enc) if keys else 0
            sets.append((kvn, length, bool(keys and keys.is_gp_test_keys())))
        return CardInfo(self._uid, self.card_life_cycle, apps, tuple(sets))

    # -- CardServices / CardOs ----------------------------------------------------------------
    @property
    def card_life_cycle(self) -> int:
        return self._registry.card_life_cycle

    def app_life_cycle(self, aid: bytes) -> int:
        entry = self._registry.get(aid)
        if entry is None:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        return entry.life_cycle

    def set_app_life_cycle(self, aid: bytes, state: int) -> None:
        self._registry.set_life_cycle(aid, state)

    def security_level(self) -> int:
        return self._channel.security_level

    @property
    def registry(self) -> Registry:
        return self._registry

    def applet(self, aid: bytes) -> Applet | None:
        return self._applets.get(aid)

    def cplc(self) -> bytes:
        return self._nvm.get("card/cplc") or b""

    # -- power --------------------------------------------------------------------------------
    def power_on(self) -> bytes:
        self._reset_transient()
        self._powered = True
        return ATR

    def reset(self) -> bytes:
        return self.power_on()

    def power_off(self) -> None:
        self._reset_transient()
        self._powered = False

    def _reset_transient(self) -> None:
        if self._selected is not None:
            self._selected.on_deselect()
        self._channel.reset()
        self._chain = None
        self._pending = None
        # The ISD is the default selected application on the basic channel (CARD_RESET privilege).
        self._selected = self._isd

    # -- the one entry point ------------------------------------------------------------------
    def process(self, apdu: bytes) -> bytes:
        if not self._powered:
            self.power_on()
        try:
            cmd = CommandApdu.parse(apdu)
        except ApduFormatError:
            self._pending = None
            self._chain = None
            return _sw(SW.WRONG_LENGTH)
        if cmd.cla == 0xFF or (not cmd.cla & 0x40 and cmd.cla & 0x20):
            # FF is PPS; b6 is RFU in the first interindustry and the GP proprietary classes.
            return _sw(SW.CLA_NOT_SUPPORTED)
        if not cmd.cla & 0x40 and cmd.cla & 0x08:
            # SM indication 10/11 (ISO secure messaging): only GP's b3 (0x04) is supported.
            return _sw(SW.SECURE_MESSAGING_NOT_SUPPORTED)
        if _channel_of(cmd.cla) != 0:
            return _sw(SW.LOGICAL_CHANNEL_NOT_SUPPORTED)
        # GET RESPONSE (ISO 7816-4 section 7.6.1) is plain, outside secure messaging.
        if cmd.ins == Ins.GET_RESPONSE and not cmd.cla & (CLA_PROPRIETARY | CLA_SECURE_MESSAGING):
            if self._pending is None:
                return _sw(SW.CONDITIONS_NOT_SATISFIED)
            data, sw = self._pending
            self._pending = None
            return self._deliver(data, sw, cmd.le or SHORT_MAX_LE)
        self._pending = None
        assembled = self._assemble(cmd)
        if assembled is None:
            return _sw(SW.OK)
        if isinstance(assembled, int):
            return _sw(assembled)
        data, sw = self._execute(assembled)
        limit = assembled.le or (EXTENDED_MAX_LE if assembled.extended else SHORT_MAX_LE)
        return self._deliver(data, sw, limit)

    def _assemble(self, cmd: CommandApdu) -> CommandApdu | int | None:
        """ISO 7816-4 section 5.3.3 command chaining: None while the chain goes on, a status word
        on a chaining error, else the whole command (``extended`` when it exceeds 255 bytes, so
        that secure messaging MACs ``00 hi lo``)."""
        header = (cmd.cla & ~CLA_CHAINING, cmd.ins, cmd.p1, cmd.p2)
        chain = self._chain
        if chain is not None and chain.header != header:
            self._chain = None
            return int(SW.LAST_COMMAND_OF_CHAIN_EXPECTED)
        if cmd.cla & CLA_CHAINING:
            if chain is None:
                chain = self._chain = _Chain(header, bytearray(), False)
            chain.data += cmd.data
            chain.extended = chain.extended or cmd.extended
            if len(chain.data) > EXTENDED_MAX_DATA:
                self._chain = None
                return int(SW.WRONG_LENGTH)
            return None
        if chain is None:
            return cmd
        self._chain = None
        data = bytes(chain.data) + cmd.data
        if len(data) > EXTENDED_MAX_DATA:
            return int(SW.WRONG_LENGTH)
        return CommandApdu(
            header[0],
            cmd.ins,
            cmd.p1,
            cmd.p2,
            data,
            cmd.le,
            extended=chain.extended or len(data) > 255,
        )

    def _deliver(self, data: bytes, sw: int, limit: int) -> bytes:
        first, rest = chunk_response(data, sw, limit)
        if rest:
            self._pending = (rest, sw)
        return first.encode()

    def _execute(self, cmd: CommandApdu) -> tuple[bytes, int]:
        self._nvm.begin()
        try:
            data, sw = self._dispatch(cmd)
            self._nvm.commit()
            return data, sw
        except ApduError as exc:
            self._nvm.rollback()
            return b"", exc.sw
        except NvmError:
            self._nvm.rollback()
            log.exception("NVM failure")
            return b"", int(SW.MEMORY_FAILURE)
        except Exception:
            self._nvm.rollback()
            log.exception("unexpected error processing INS %02X", cmd.ins)
            return b"", int(SW.UNKNOWN)

    def _dispatch(self, cmd: CommandApdu) -> tuple[bytes, int]:
        life_cycle = self.card_life_cycle
        if cmd.ins == Ins.SELECT and not cmd.cla & CLA_PROPRIETARY:
            return self._select(cmd, life_cycle), int(SW.OK)
        if cmd.ins == Ins.MANAGE_CHANNEL and not cmd.cla & CLA_PROPRIETARY:
            raise ApduError(SW.LOGICAL_CHANNEL_NOT_SUPPORTED)
        applet = self._selected
        if applet is None:
            raise ApduError(SW.COMMAND_NOT_ALLOWED)
        if life_cycle == CardLifeCycle.TERMINATED and not (
            applet is self._isd and cmd.ins in (GpIns.GET_DATA, GpIns.GET_DATA_ODD)
        ):
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        if not applet.SECURE_MESSAGING:
            if cmd.cla & CLA_SECURE_MESSAGING:
                raise ApduError(SW.SECURE_MESSAGING_NOT_SUPPORTED)
            return _normalize(applet.process(cmd))
        if self._channel.is_security_command(cmd):
            return self._channel.process_security(cmd), int(SW.OK)
        plain = self._channel.unwrap(cmd)
        data, sw = _normalize(applet.process(plain))
        return self._channel.wrap(data, sw), sw

    def _select(self, cmd: CommandApdu, life_cycle: int) -> bytes:
        # ISO 7816-4 section 11.2.2; GPC 2.3.1 section 11.9.
        if cmd.p1 != SELECT_BY_DF_NAME or cmd.p2 not in (SELECT_FIRST_OR_ONLY, SELECT_NEXT):
            raise ApduError(SW.INCORRECT_P1P2)
        if cmd.cla & CLA_SECURE_MESSAGING:
            raise ApduError(SW.SECURE_MESSAGING_NOT_SUPPORTED)
        name = cmd.data or gp.ISD_AID
        if not 5 <= len(name) <= 16 and cmd.data:
            raise ApduError(SW.WRONG_DATA)
        candidates = [
            e
            for e in self._registry.find(name)
            if e.aid in self._applets
            and (e.aid == gp.ISD_AID or (e.selectable and life_cycle != CardLifeCycle.CARD_LOCKED))
        ]
        if life_cycle == CardLifeCycle.TERMINATED:
            candidates = [e for e in candidates if e.aid == gp.ISD_AID]
        if cmd.p2 == SELECT_NEXT and self._selected is not None:
            current = self._selected.AID
            later = [e for e in candidates if e.aid > current]
            candidates = later
        if not candidates:
            raise ApduError(SW.FILE_NOT_FOUND)
        target = self._applets[candidates[0].aid]
        if self._selected is not None:
            self._selected.on_deselect()
        self._channel.reset()  # a new application session ends the secure channel session
        self._selected = None
        fci = target.on_select()
        self._selected = target
        return fci


def _elf_of(app: type[Applet]) -> bytes:
    return getattr(app, "ELF_AID", b"") or app.AID[:-1]


def _channel_of(cla: int) -> int:
    """Logical channel number coded in CLA (ISO 7816-4 section 5.4.1)."""
    if cla & 0x40:
        return 4 + (cla & 0x0F)
    return cla & 0x03


def _normalize(reply: Reply) -> tuple[bytes, int]:
    if isinstance(reply, ResponseApdu):
        return reply.data, reply.sw
    return reply, int(SW.OK)


def _sw(sw: int) -> bytes:
    return int(sw).to_bytes(2, "big")

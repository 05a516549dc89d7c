"""The GlobalPlatform registry of the emulated card: which applications exist and their state.

Scope: persistent registry entries (AID, life cycle, privileges, executable load file, associated
security domain), kept in NVM records ``reg/<AID>``, and the GP life cycle rules for card and
application state transitions (GPC 2.3.1 sections 5.1 and 5.3).
Not in scope: application behaviour (applets), GET STATUS encoding (``iotid.se.isd``).
"""

from __future__ import annotations

from dataclasses import dataclass

from iotid.apdu import ApduError, ApduFormatError, parse_tlvs, tlv
from iotid.se.nvm import Nvm
from iotid.spec.gp import APP_LOCKED_BIT, ISD_AID, AppLifeCycle, CardLifeCycle
from iotid.spec.iso7816 import SW

_PREFIX = "reg/"
_T_LC, _T_PRIV, _T_ELF, _T_SD = 0x80, 0x81, 0x82, 0x83


@dataclass(frozen=True)
class RegistryEntry:
    aid: bytes
    life_cycle: int
    privileges: int
    elf_aid: bytes
    sd_aid: bytes = ISD_AID

    @property
    def locked(self) -> bool:
        return self.aid != ISD_AID and bool(self.life_cycle & APP_LOCKED_BIT)

    @property
    def selectable(self) -> bool:
        return (self.life_cycle & 0x07) == 0x07 and not self.locked

    def encode(self) -> bytes:
        return (
            tlv(_T_LC, bytes([self.life_cycle]))
            + tlv(_T_PRIV, self.privileges.to_bytes(3, "big"))
            + tlv(_T_ELF, self.elf_aid)
            + tlv(_T_SD, self.sd_aid)
        )

    @classmethod
    def decode(cls, aid: bytes, raw: bytes) -> RegistryEntry:
        try:
            items = {t.tag: t.value for t in parse_tlvs(raw)}
            return cls(
                aid=aid,
                life_cycle=items[_T_LC][0],
                privileges=int.from_bytes(items[_T_PRIV], "big"),
                elf_aid=items[_T_ELF],
                sd_aid=items[_T_SD],
            )
        except (KeyError, IndexError, ApduFormatError) as exc:
            raise ValueError("corrupt registry entry") from exc


class Registry:
    """GP registry view over NVM."""

    def __init__(self, nvm: Nvm) -> None:
        self._nvm = nvm
        # Decoded entries keyed by AID, valid while the record's bytes are the same object/value:
        # the card OS reads the ISD entry (the card life cycle) on every APDU.
        self._cache: dict[bytes, tuple[bytes, RegistryEntry]] = {}

    def put(self, entry: RegistryEntry) -> None:
        self._nvm.put(_PREFIX + entry.aid.hex(), entry.encode())

    def get(self, aid: bytes) -> RegistryEntry | None:
        raw = self._nvm.get(_PREFIX + aid.hex())
        if raw is None:
            return None
        cached = self._cache.get(aid)
        if cached is not None and (cached[0] is raw or cached[0] == raw):
            return cached[1]
        entry = RegistryEntry.decode(aid, raw)
        self._cache[aid] = (raw, entry)
        return entry

    def entries(self) -> list[RegistryEntry]:
        out = []
        for key in self._nvm.keys(_PREFIX):
            entry = self.get(bytes.fromhex(key[len(_PREFIX) :]))
            if entry is not None:
                out.append(entry)
        return out

    def find(self, partial_aid: bytes) -> list[RegistryEntry]:
        """Entries whose AID starts with ``partial_aid`` (ISO 7816-4 partial DF name), in order."""
        return [e for e in self.entries() if e.aid.startswith(partial_aid)]

    @property
    def card_life_cycle(self) -> int:
        isd = self.get(ISD_AID)
        return CardLifeCycle.OP_READY if isd is None else isd.life_cycle

    def set_life_cycle(self, aid: bytes, state: int) -> None:
        entry = self.get(aid)
        if entry is None:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        self.put(RegistryEntry(entry.aid, state, entry.privileges, entry.elf_aid, entry.sd_aid))


# GPC 2.3.1 Figure 5-1: allowed card life cycle transitions (TERMINATED reachable from any state).
_CARD_TRANSITIONS: dict[int, set[int]] = {
    CardLifeCycle.OP_READY: {CardLifeCycle.INITIALIZED, CardLifeCycle.SECURED},
    CardLifeCycle.INITIALIZED: {CardLifeCycle.SECURED},
    CardLifeCycle.SECURED: {CardLifeCycle.CARD_LOCKED},
    CardLifeCycle.CARD_LOCKED: {CardLifeCycle.SECURED},
    CardLifeCycle.TERMINATED: set(),
}


def check_card_transition(current: int, new: int) -> None:
    """Raise 6985 unless GP allows ``current -> new`` for the card life cycle."""
    if new == CardLifeCycle.TERMINATED and current != CardLifeCycle.TERMINATED:
        return
    if new not in _CARD_TRANSITIONS.get(current, set()):
        raise ApduError(SW.CONDITIONS_NOT_SATISFIED)


def check_app_transition(current: int, new: int) -> None:
    """GPC 2.3.1 section 5.3.1: application-specific states keep b1..b3 set and never go back to
    INSTALLED; LOCKED toggles bit b8. Raise 6985 (or 6A80 for an invalid coding) otherwise."""
    if new & 0x07 != 0x07 and new != AppLifeCycle.LOCKED:
        raise ApduError(SW.WRONG_DATA)
    if current == AppLifeCycle.INSTALLED and new != AppLifeCycle.SELECTABLE:
        raise ApduError(SW.CONDITIONS_NOT_SATISFIED)


__all__ = [
    "Registry",
    "RegistryEntry",
    "check_app_transition",
    "check_card_transition",
]

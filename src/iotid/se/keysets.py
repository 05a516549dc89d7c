"""The Issuer Security Domain's SCP03 key sets.

Scope: key sets addressed by Key Version Number (KVN), each Key-ENC (KID 01), Key-MAC (02) and
Key-DEK (03) kept in non-extractable key store slots, and the per-key-set 3-byte sequence counter
of the pseudo-random card challenge (GPC 2.3.1 Amd D section 6.2.2.1: reset to zero when the
key set is created or replaced, incremented by every INITIALIZE UPDATE).
Not in scope: the PUT KEY / DELETE KEY wire formats (``iotid.se.isd``), the SCP03 protocol.
"""

from __future__ import annotations

from iotid.apdu import ApduError
from iotid.scp03 import StaticKeys
from iotid.se.keystore import KeyStore
from iotid.se.nvm import Nvm
from iotid.spec.gp import KEY_ID_DEK, KEY_ID_ENC, KEY_ID_MAC, SEQUENCE_COUNTER_MAX
from iotid.spec.iso7816 import SW

_SEQ = "isd/seq/"
_KIDS = (KEY_ID_ENC, KEY_ID_MAC, KEY_ID_DEK)


class KeySets:
    """SCP03 key sets of one security domain."""

    def __init__(self, nvm: Nvm, keys: KeyStore) -> None:
        self._nvm = nvm
        self._keys = keys

    def __repr__(self) -> str:
        return f"KeySets(versions={[hex(v) for v in self.versions()]})"

    @staticmethod
    def _slot(kvn: int, kid: int) -> str:
        return f"isd.{kvn:02x}.{kid:02x}"

    def versions(self) -> list[int]:
        out = set()
        for info in self._keys.slots():
            parts = info.slot.split(".")
            if len(parts) == 3 and parts[0] == "isd":
                out.add(int(parts[1], 16))
        return sorted(out)

    def get(self, kvn: int) -> StaticKeys | None:
        """The key set ``kvn``; ``kvn`` 0 means the first available one (Amd D section 7.1.1.3)."""
        if kvn == 0:
            versions = self.versions()
            if not versions:
                return None
            kvn = versions[0]
        slots = [self._slot(kvn, kid) for kid in _KIDS]
        if not all(self._keys.has(s) for s in slots):
            return None
        enc, mac, dek = (self._keys.secret(s) for s in slots)
        return StaticKeys(enc, mac, dek)

    def resolve(self, kvn: int) -> int:
        """The concrete KVN that ``kvn`` (0 = first available) designates."""
        if kvn == 0:
            versions = self.versions()
            if not versions:
                raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
            return versions[0]
        return kvn

    def key_lengths(self, kvn: int) -> list[tuple[int, int]]:
        """(KID, key length) of each key present in ``kvn``."""
        out = []
        for kid in _KIDS:
            slot = self._slot(kvn, kid)
            if self._keys.has(slot):
                out.append((kid, len(self._keys.secret(slot))))
        return out

    def put(self, kvn: int, keys: StaticKeys) -> None:
        for kid, key in zip(_KIDS, (keys.enc, keys.mac, keys.dek), strict=True):
            self._keys.put_secret(self._slot(kvn, kid), key)
        self._nvm.put(_SEQ + f"{kvn:02x}", b"\x00\x00\x00")

    def delete(self, kvn: int) -> None:
        for kid in _KIDS:
            self._keys.destroy(self._slot(kvn, kid))
        self._nvm.delete(_SEQ + f"{kvn:02x}")

    def sequence(self, kvn: int) -> int:
        raw = self._nvm.get(_SEQ + f"{kvn:02x}")
        return int.from_bytes(raw, "big") if raw else 0

    def next_sequence(self, kvn: int) -> int:
        """Increment and return the sequence counter; 6985 once it is exhausted."""
        current = self.sequence(kvn)
        if current >= SEQUENCE_COUNTER_MAX:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        self._nvm.put(_SEQ + f"{kvn:02x}", (current + 1).to_bytes(3, "big"))
        return current + 1

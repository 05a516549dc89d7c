"""SCP03 key containers: the static key set of a security domain and the session keys.

Scope: immutable holders for Key-ENC/Key-MAC/Key-DEK (GPC 2.3.1 Amd D §6.1, Table 6-1) and for
S-ENC/S-MAC/S-RMAC (Amd D §6.2.1), with length checks, key check values and redacted ``repr``.
The GP test key set (40..4F) is reachable only through :meth:`StaticKeys.gp_test_keys`; there is
no default. Not covered: deriving session keys (:mod:`iotid.scp03.kdf`), key storage, PUT KEY.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from iotid.crypto import AES_KEY_LENGTHS, aes_kcv

__all__ = ["SessionKeys", "StaticKeys"]

#: The GlobalPlatform test key value carried by a fresh card (DESIGN §5), for all three keys.
_GP_TEST_KEY = bytes(range(0x40, 0x50))


def _check_key_set(kind: str, keys: tuple[object, ...]) -> int:
    lengths = set()
    for key in keys:
        if not isinstance(key, bytes):
            raise TypeError(f"{kind} keys must be bytes")
        lengths.add(len(key))
    if len(lengths) != 1:
        raise ValueError(f"{kind} keys must all have the same length")
    (length,) = lengths
    if length not in AES_KEY_LENGTHS:
        raise ValueError(f"{kind} keys must be 16, 24 or 32 bytes")
    return length


@dataclass(frozen=True, repr=False, eq=False)
class StaticKeys:
    """A static SCP03 key set (Amd D §6.1): Key-ENC, Key-MAC and Key-DEK of the same length."""

    enc: bytes
    mac: bytes
    dek: bytes

    def __post_init__(self) -> None:
        _check_key_set("static", (self.enc, self.mac, self.dek))

    @classmethod
    def gp_test_keys(cls) -> StaticKeys:
        """The publicly known GP test key set (ENC = MAC = DEK = 40..4F, AES-128).

        Only for fresh cards and tests; personalisation must replace it.
        """
        return cls(_GP_TEST_KEY, _GP_TEST_KEY, _GP_TEST_KEY)

    @property
    def key_length(self) -> int:
        """Key length in bytes (16, 24 or 32)."""
        return len(self.enc)

    def is_gp_test_keys(self) -> bool:
        """True if every key equals the GP test key value (compared in constant time)."""
        result = True
        for key in (self.enc, self.mac, self.dek):
            result &= hmac.compare_digest(key, _GP_TEST_KEY)
        return result

    def kcvs(self) -> tuple[bytes, bytes, bytes]:
        """Key check values (3 bytes each) of Key-ENC, Key-MAC, Key-DEK."""
        return aes_kcv(self.enc), aes_kcv(self.mac), aes_kcv(self.dek)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StaticKeys):
            return NotImplemented
        return hmac.compare_digest(
            self.enc + self.mac + self.dek, other.enc + other.mac + other.dek
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        enc, mac, dek = (kcv.hex().upper() for kcv in self.kcvs())
        return f"StaticKeys(AES-{8 * self.key_length}, kcv enc={enc} mac={mac} dek={dek})"

    __str__ = __repr__


@dataclass(frozen=True, repr=False, eq=False)
class SessionKeys:
    """SCP03 session keys (Amd D §6.2.1): S-ENC, S-MAC, S-RMAC, all of the static key length."""

    s_enc: bytes
    s_mac: bytes
    s_rmac: bytes

    def __post_init__(self) -> None:
        _check_key_set("session", (self.s_enc, self.s_mac, self.s_rmac))

    @property
    def key_length(self) -> int:
        """Key length in bytes (16, 24 or 32)."""
        return len(self.s_enc)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionKeys):
            return NotImplemented
        return hmac.compare_digest(
            self.s_enc + self.s_mac + self.s_rmac, other.s_enc + other.s_mac + other.s_rmac
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SessionKeys(AES-{8 * self.key_length}, <redacted>)"

    __str__ = __repr__

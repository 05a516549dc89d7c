"""Algorithm identifiers on the wire, shared by the card, the host and (later) the factory.

Scope: the one-byte codes that name a key algorithm in APDUs and in the key store. Which hash
goes with which key (P-256/SHA-256, P-384/SHA-384) is also fixed here, because both sides must
agree on it. Not in scope: the primitives themselves (``iotid.crypto``).
"""

from __future__ import annotations

from enum import IntEnum, unique


@unique
class KeyAlg(IntEnum):
    """Key algorithm codes."""

    EC_P256 = 0x01
    EC_P384 = 0x02
    RSA_2048 = 0x11
    RSA_3072 = 0x12
    AES_128 = 0x21
    AES_192 = 0x22
    AES_256 = 0x23

    @property
    def is_ec(self) -> bool:
        return self in (KeyAlg.EC_P256, KeyAlg.EC_P384)

    @property
    def is_rsa(self) -> bool:
        return self in (KeyAlg.RSA_2048, KeyAlg.RSA_3072)

    @property
    def is_aes(self) -> bool:
        return self in (KeyAlg.AES_128, KeyAlg.AES_192, KeyAlg.AES_256)

    @property
    def size_bits(self) -> int:
        return {
            KeyAlg.EC_P256: 256,
            KeyAlg.EC_P384: 384,
            KeyAlg.RSA_2048: 2048,
            KeyAlg.RSA_3072: 3072,
            KeyAlg.AES_128: 128,
            KeyAlg.AES_192: 192,
            KeyAlg.AES_256: 256,
        }[self]

    @property
    def hash_name(self) -> str:
        """The hash that goes with this key (SHA-384 for P-384, SHA-256 otherwise)."""
        return "sha384" if self is KeyAlg.EC_P384 else "sha256"

    @classmethod
    def from_name(cls, name: str) -> KeyAlg:
        """``p256``, ``p384``, ``rsa2048``, ``rsa3072``, ``aes128`` ... (CLI spelling)."""
        table = {
            "p256": cls.EC_P256,
            "p384": cls.EC_P384,
            "rsa2048": cls.RSA_2048,
            "rsa3072": cls.RSA_3072,
            "aes128": cls.AES_128,
            "aes192": cls.AES_192,
            "aes256": cls.AES_256,
        }
        try:
            return table[name.lower()]
        except KeyError:
            raise ValueError(
                f"unknown algorithm {name!r}; expected one of {sorted(table)}"
            ) from None

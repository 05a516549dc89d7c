"""The factory's key store: one interface, two backends (software, PKCS#11 HSM).

Scope: the types every factory module codes against. Keys live in two *tiers*:
- ``quorum``: the issuance root CA key (and anything as sensitive). Every use needs the store
  unlocked in the same process with M of the ceremony's N SLIP-39 shares.
- ``operational``: per-batch keys and secrets the personalisation line uses unattended (batch
  attestation CA key, batch master key, ISD diversification master, firmware signing key).
  Unlocked either by the quorum or by the batch's *line key*, a credential released at batch
  creation for the line (in production: sealed in the line's HSM; here a 0600 file).
Private keys never leave a backend: callers get :class:`Signer` objects and, for the symmetric
secrets the line must inject into cards (encrypted under each card's Key-DEK), the secret bytes.
Not in scope: the backends (``softstore``, ``hsmstore``), the shares (``shares``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotid.spec.algorithms import KeyAlg

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class Tier(StrEnum):
    QUORUM = "quorum"
    OPERATIONAL = "operational"


class KeyStoreError(Exception):
    """Base of key store failures; messages never contain key material or share words."""


class QuorumError(KeyStoreError):
    """Fewer than M shares, a malformed or wrong share, or a share of another ceremony."""


class LockedError(KeyStoreError):
    """The key's tier is not unlocked in this process."""


class UnknownKeyError(KeyStoreError):
    """No key of that name."""


@dataclass(frozen=True)
class KeyInfo:
    name: str
    alg: KeyAlg
    tier: Tier
    #: SHA-256 of the SubjectPublicKeyInfo DER (hex); secrets: SHA-256 of a KCV-like tag.
    fingerprint: str
    secret: bool = False


class Signer(Protocol):
    """Signs with a key that stays in its backend.

    ``sign(data)``: ECDSA with the curve's hash (SHA-256 for P-256, SHA-384 for P-384), DER; RSA:
    PKCS#1 v1.5 with SHA-256 (what X.509 signing with RSA uses) unless ``pss`` is set, then
    RSA-PSS SHA-256 with a 32-byte salt (MCUboot's RSA-PSS).
    """

    @property
    def alg(self) -> KeyAlg: ...

    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes, *, pss: bool = False) -> bytes: ...


class FactoryKeyStore(Protocol):
    @property
    def backend(self) -> str: ...  # "software" | "pkcs11"

    def keys(self) -> list[KeyInfo]: ...

    def generate(self, name: str, alg: KeyAlg, *, tier: Tier) -> PublicKey:
        """A new key pair inside the backend (the tier must be unlocked); returns the public key."""
        ...

    def generate_secret(
        self, name: str, length: int = 32, *, tier: Tier = Tier.OPERATIONAL
    ) -> None: ...

    def public_key(self, name: str) -> PublicKey: ...

    def signer(self, name: str) -> Signer:
        """LockedError unless the key's tier is unlocked."""
        ...

    def secret(self, name: str) -> bytes:
        """An operational secret (batch master key, ISD diversification master) for the line."""
        ...

    def unlock_quorum(self, shares: Sequence[str]) -> None:
        """Present M shares (mnemonic text); QuorumError explains what is wrong."""
        ...

    def unlock_operational(self, line_key: bytes) -> None: ...


def fingerprint(public_key: PublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


__all__ = [
    "FactoryKeyStore",
    "KeyInfo",
    "KeyStoreError",
    "LockedError",
    "PublicKey",
    "QuorumError",
    "Signer",
    "Tier",
    "UnknownKeyError",
    "fingerprint",
]

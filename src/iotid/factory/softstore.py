"""The software key store: the embedded default backend of :class:`FactoryKeyStore`.

Scope: key pairs (P-256, P-384, RSA-2048/3072) and symmetric secrets kept as one JSON file per key
under ``DIR/keys/``, the private part PKCS#8 DER (or the raw secret) encrypted at rest with
AES-256-GCM under the key-encryption key (KEK) of its tier; the key's name, kind, algorithm, tier
and public-key fingerprint are the associated data, so a file renamed, moved to another tier or
given another public key fails authentication. The public key (SPKI) sits in clear beside it so
``public_key``/``keys`` work without unlocking.

The two KEKs (``DIR/softstore.json``):
- quorum KEK: the 32-byte SLIP-39 master secret recovered from M of the ceremony's N shares
  (``shares``). Never stored; present only in the memory of a process the quorum unlocked.
- operational KEK: random, stored encrypted under the quorum KEK (so a quorum unlocks everything)
  and released to the personalisation line as its *line key* (``create_line_key``). A line key is
  checked against a GCM tag made with it (``line_check``), never stored itself.
A wrong KEK (shares of another ceremony that happen to combine, a wrong line key) fails AES-GCM
authentication and is reported as such: never a garbage key.

Not in scope: the PKCS#11 backend (``hsmstore``, which reuses this store for its symmetric
secrets), the file and sealing helpers (``keyfiles``), choosing a backend (``stores``), the
ceremony record. Python cannot wipe memory: ``lock()`` drops references, and signers already
handed out keep their key.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from iotid.factory import shares as slip39
from iotid.factory.keyfiles import (
    KEK_LENGTH,
    b64,
    check_name,
    normalise_line_key,
    read_json,
    seal,
    secret_fingerprint,
    unb64,
    unseal,
    write_new,
)
from iotid.factory.keystore import (
    KeyInfo,
    KeyStoreError,
    LockedError,
    PublicKey,
    QuorumError,
    Tier,
    UnknownKeyError,
    fingerprint,
)
from iotid.factory.shares import ShareSet
from iotid.spec.algorithms import KeyAlg

META_FILE = "softstore.json"
KEYS_DIR = "keys"
_FORMAT = "iotid-softstore/1"
_KEY_FORMAT = "iotid-softstore-key/1"
_SECRET_ALGS = {16: KeyAlg.AES_128, 24: KeyAlg.AES_192, 32: KeyAlg.AES_256}
_CURVES: dict[KeyAlg, ec.EllipticCurve] = {
    KeyAlg.EC_P256: ec.SECP256R1(),
    KeyAlg.EC_P384: ec.SECP384R1(),
}


def _aad(record: dict[str, Any]) -> bytes:
    bound = {k: record[k] for k in ("format", "name", "kind", "alg", "tier", "fingerprint")}
    return json.dumps(bound, sort_keys=True, separators=(",", ":")).encode()


class _SoftwareSigner:
    """Signer over a private key decrypted for this process (see keystore.Signer)."""

    def __init__(
        self, alg: KeyAlg, private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ) -> None:
        self._alg = alg
        self._key = private_key

    def __repr__(self) -> str:
        return (
            f"SoftwareSigner({self._alg.name}, fingerprint={fingerprint(self.public_key())[:16]})"
        )

    @property
    def alg(self) -> KeyAlg:
        return self._alg

    def public_key(self) -> PublicKey:
        return self._key.public_key()

    def sign(self, data: bytes, *, pss: bool = False) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            if pss:
                raise ValueError("PSS applies to RSA keys only")
            digest = hashes.SHA384() if self._alg is KeyAlg.EC_P384 else hashes.SHA256()
            return self._key.sign(data, ec.ECDSA(digest))  # X9.62 ECDSA, DER
        if pss:  # RFC 8017 §8.1 RSASSA-PSS, MGF1-SHA-256, 32-byte salt (MCUboot's)
            return self._key.sign(
                data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
            )
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())  # RFC 8017 §8.2


# --- the store -------------------------------------------------------------------------------


class SoftwareKeyStore:
    """FactoryKeyStore with keys encrypted at rest under tier KEKs (see the module docstring)."""

    backend = "software"

    def __init__(self, directory: Path | str) -> None:
        self._dir = Path(directory)
        self._quorum_kek: bytes | None = None
        self._op_kek: bytes | None = None
        self._meta_cache: dict[str, Any] | None = None

    def __repr__(self) -> str:
        state = "quorum" if self._quorum_kek else "operational" if self._op_kek else "locked"
        return f"SoftwareKeyStore({str(self._dir)!r}, unlocked={state})"

    @property
    def directory(self) -> Path:
        return self._dir

    # -- creation and unlocking

    def initialise(self, threshold: int, count: int) -> ShareSet:
        """Create a new store; returns the N shares for the caller to hand out. Stays unlocked."""
        slip39.check_quorum(threshold, count)
        master = secrets.token_bytes(KEK_LENGTH)
        share_set = slip39.split(master, threshold, count)
        self.initialise_with_kek(
            master, identifier=share_set.identifier, threshold=threshold, count=count
        )
        return share_set

    def initialise_with_kek(
        self, quorum_kek: bytes, *, identifier: int, threshold: int, count: int
    ) -> None:
        """Create a new store under a quorum KEK split elsewhere (``hsmstore`` derives one)."""
        if len(quorum_kek) != KEK_LENGTH:
            raise ValueError("the quorum KEK must be 32 bytes")
        op_kek = secrets.token_bytes(KEK_LENGTH)
        meta: dict[str, Any] = {
            "format": _FORMAT,
            "identifier": identifier,
            "threshold": threshold,
            "count": count,
        }
        meta["operational_kek"] = seal(quorum_kek, op_kek, self._meta_aad(meta))
        meta["line_check"] = seal(op_kek, b"", b"iotid-softstore/1 line key check")
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_new(self._dir / META_FILE, meta)
        self._meta_cache = meta
        self._quorum_kek, self._op_kek = quorum_kek, op_kek

    def unlock_quorum(self, shares: Sequence[str]) -> None:
        meta = self._meta()
        master = slip39.combine(shares, expected_identifier=meta["identifier"], count=meta["count"])
        self.unlock_quorum_kek(master)

    def unlock_quorum_kek(self, quorum_kek: bytes) -> None:
        """Unlock with a recovered quorum KEK; QuorumError when it does not open this store."""
        meta = self._meta()
        op_kek = unseal(quorum_kek, meta["operational_kek"], self._meta_aad(meta))
        if op_kek is None:
            raise QuorumError(
                "the shares combine but do not open this key store (AES-GCM authentication "
                "failed): they belong to another ceremony, or the store was tampered with"
            )
        self._quorum_kek, self._op_kek = quorum_kek, op_kek

    def create_line_key(self) -> bytes:
        """The line key (the operational KEK) for the personalisation line; needs the quorum."""
        if self._quorum_kek is None or self._op_kek is None:
            raise LockedError(f"releasing the line key needs {self._quorum_text()}")
        return self._op_kek

    def unlock_operational(self, line_key: bytes) -> None:
        """Unlock the operational tier with the line key (raw 32 bytes, or the 64 hex digits of a
        ``line.key`` file); LockedError if it is not this store's."""
        line_key = normalise_line_key(line_key)
        meta = self._meta()
        if unseal(line_key, meta["line_check"], b"iotid-softstore/1 line key check") is None:
            raise LockedError("that line key does not open this key store")
        self._op_kek = line_key

    def lock(self) -> None:
        self._quorum_kek = self._op_kek = None

    def unlocked(self, tier: Tier) -> bool:
        return (self._quorum_kek if tier is Tier.QUORUM else self._op_kek) is not None

    # -- keys

    def keys(self) -> list[KeyInfo]:
        folder = self._dir / KEYS_DIR
        paths = folder.rglob("*.json") if folder.is_dir() else iter(())
        names = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in paths)
        return [self._info(self._record(name)) for name in names]

    def has_key(self, name: str) -> bool:
        return (self._dir / KEYS_DIR / f"{check_name(name)}.json").exists()

    def generate(self, name: str, alg: KeyAlg, *, tier: Tier) -> PublicKey:
        check_name(name)
        kek = self._kek(tier, f"generating the {name} key")
        private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if alg.is_ec:
            private_key = ec.generate_private_key(_CURVES[alg])
        elif alg.is_rsa:
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=alg.size_bits)
        else:
            raise ValueError(f"{alg.name} is not a key-pair algorithm; use generate_secret")
        public = private_key.public_key()
        spki = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pkcs8 = private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._store(name, "keypair", alg, tier, fingerprint(public), pkcs8, kek, spki)
        return public

    def generate_secret(
        self, name: str, length: int = 32, *, tier: Tier = Tier.OPERATIONAL
    ) -> None:
        check_name(name)
        if length not in _SECRET_ALGS:
            raise ValueError(f"a secret is 16, 24 or 32 bytes, not {length}")
        kek = self._kek(tier, f"generating the {name} secret")
        value = secrets.token_bytes(length)
        self._store(
            name, "secret", _SECRET_ALGS[length], tier, secret_fingerprint(value), value, kek
        )

    def public_key(self, name: str) -> PublicKey:
        record = self._record(name)
        if record["kind"] != "keypair":
            raise KeyStoreError(f"{name} is a secret, not a key pair")
        return self._public(record)

    def signer(self, name: str) -> _SoftwareSigner:
        record = self._record(name)
        if record["kind"] != "keypair":
            raise KeyStoreError(f"{name} is a secret, not a key pair")
        der = self._decrypt(record)
        private_key = serialization.load_der_private_key(der, password=None)
        if not isinstance(private_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise KeyStoreError(f"the key file for {name} holds an unexpected key type")
        if fingerprint(private_key.public_key()) != record["fingerprint"]:
            raise KeyStoreError(f"the key file for {name} does not match its public key")
        return _SoftwareSigner(KeyAlg[record["alg"]], private_key)

    def secret(self, name: str) -> bytes:
        record = self._record(name)
        if record["kind"] != "secret":
            raise KeyStoreError(f"{name} is a key pair, not a secret")
        return self._decrypt(record)

    # -- internals

    def _meta(self) -> dict[str, Any]:
        if self._meta_cache is None:
            try:
                meta = read_json(self._dir / META_FILE, "the key store metadata")
            except FileNotFoundError:
                raise KeyStoreError(f"no software key store in {self._dir}") from None
            if meta.get("format") != _FORMAT or not all(
                isinstance(meta.get(k), int) for k in ("identifier", "threshold", "count")
            ):
                raise KeyStoreError(f"{self._dir / META_FILE} is not a {_FORMAT} file")
            self._meta_cache = meta
        return self._meta_cache

    @staticmethod
    def _meta_aad(meta: dict[str, Any]) -> bytes:
        return (
            f"{_FORMAT} operational KEK; identifier={meta['identifier']}; "
            f"quorum={meta['threshold']}-of-{meta['count']}"
        ).encode()

    def _quorum_text(self) -> str:
        meta = self._meta()
        return f"{meta['threshold']} of {meta['count']} shares"

    def _kek(self, tier: Tier, what: str) -> bytes:
        if tier is Tier.QUORUM and self._quorum_kek is not None:
            return self._quorum_kek
        if tier is Tier.OPERATIONAL and self._op_kek is not None:
            return self._op_kek
        if tier is Tier.QUORUM:
            raise LockedError(f"{what} needs {self._quorum_text()} (quorum tier locked)")
        raise LockedError(
            f"{what} needs the line key or {self._quorum_text()} (operational tier locked)"
        )

    def _store(
        self,
        name: str,
        kind: str,
        alg: KeyAlg,
        tier: Tier,
        fp: str,
        plaintext: bytes,
        kek: bytes,
        spki: bytes | None = None,
    ) -> None:
        record: dict[str, Any] = {
            "format": _KEY_FORMAT,
            "name": name,
            "kind": kind,
            "alg": alg.name,
            "tier": tier.value,
            "fingerprint": fp,
            "public_key": b64(spki) if spki is not None else None,
        }
        record |= seal(kek, plaintext, _aad(record))
        path = self._dir / KEYS_DIR / f"{name}.json"
        if path.exists():
            raise KeyStoreError(f"a key named {name} already exists")
        write_new(path, record)

    def _record(self, name: str) -> dict[str, Any]:
        path = self._dir / KEYS_DIR / f"{check_name(name)}.json"
        try:
            record = read_json(path, f"the key file for {name}")
        except FileNotFoundError:
            raise UnknownKeyError(f"no key named {name}") from None
        try:
            valid = (
                record["format"] == _KEY_FORMAT
                and record["name"] == name
                and record["kind"] in ("keypair", "secret")
                and record["alg"] in KeyAlg.__members__
                and record["tier"] in {t.value for t in Tier}
                and isinstance(record["fingerprint"], str)
            )
        except KeyError:
            valid = False
        if not valid:
            raise KeyStoreError(f"the key file for {name} is corrupt or was tampered with")
        return record

    def _public(self, record: dict[str, Any]) -> PublicKey:
        try:
            public = serialization.load_der_public_key(unb64(record["public_key"]))
        except (TypeError, ValueError):
            public = None
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or (
            fingerprint(public) != record["fingerprint"]
        ):
            raise KeyStoreError(
                f"the key file for {record['name']} has a public key that does not match its "
                "fingerprint: it was tampered with"
            )
        return public

    def _decrypt(self, record: dict[str, Any]) -> bytes:
        name = record["name"]
        kek = self._kek(Tier(record["tier"]), f"the {name} key")
        plaintext = unseal(kek, record, _aad(record))
        if plaintext is None:
            raise KeyStoreError(
                f"the key file for {name} failed authentication (AES-GCM): it was modified or "
                "belongs to another store"
            )
        return plaintext

    def _info(self, record: dict[str, Any]) -> KeyInfo:
        return KeyInfo(
            name=record["name"],
            alg=KeyAlg[record["alg"]],
            tier=Tier(record["tier"]),
            fingerprint=record["fingerprint"],
            secret=record["kind"] == "secret",
        )


__all__ = ["META_FILE", "SoftwareKeyStore"]

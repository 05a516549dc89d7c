"""The PKCS#11 key store: :class:`FactoryKeyStore` over an HSM token (``python-pkcs11``).

Scope: key pairs generated inside the token (``CKA_TOKEN``, ``CKA_SENSITIVE``, not
``CKA_EXTRACTABLE``, not modifiable, sign-only), labelled by key name, their tier written in
``CKA_ID`` (``b"quorum/"`` or ``b"operational/"`` + 8 random bytes) so the token, not a file, says
which tier a key belongs to; ECDSA as ``CKM_ECDSA`` over a digest computed with ``cryptography``
(the raw r||s the token returns is re-encoded as DER), RSA as ``CKM_SHA256_RSA_PKCS`` and
``CKM_SHA256_RSA_PKCS_PSS`` (MGF1-SHA-256, 32-byte salt). ``DIR/hsmkeys/<name>.json`` indexes the
keys (algorithm, tier, public key) for use without logging in; at signing time the token's own
public key and ``CKA_ID`` are checked against it.

The token's user PIN is split M-of-N exactly like the software quorum KEK: at ``initialise`` a
fresh 32-byte master secret is split into SLIP-39 shares and the token's user PIN is changed
(``C_SetPIN``) to one derived from it (HKDF-SHA-256), so after the ceremony nobody knows the PIN
and M shares are needed to log in. ``unlock_quorum`` recovers the secret, checks it and logs in.

Symmetric operational secrets (batch master keys, ISD diversification masters) stay in a
:class:`SoftwareKeyStore` under ``DIR/secrets/`` whose quorum KEK is derived from the same master
secret: the line must inject them into cards, so they must leave the backend; a production HSM
would instead wrap them under each card's Key-DEK inside the token (out of scope here).

Operational signing keys on the token need the PIN too, so the line needs a login without the
custodians: the quorum releases the line key (the software tier's operational KEK) and the PIN is
stored encrypted under it (``line_pin``), so ``unlock_operational(line_key)`` logs in unattended.
Limitation: the PIN is per token, so a process holding the line key could, with its own code, use
the root key; this store refuses to (tiers are enforced here), and a production deployment puts
operational keys on a separate token or partition with its own PIN.

Not in scope: choosing the backend (``stores``), moving keys between backends (HSM keys do not
leave the HSM: switching backend means a new ceremony). PKCS#11 login state is per process and
token: ``close()`` logs the whole process out of the token.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pkcs11
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from iotid.factory import shares as slip39
from iotid.factory.keyfiles import (
    check_name,
    normalise_line_key,
    read_json,
    seal,
    unseal,
    write_new,
)
from iotid.factory.keystore import (
    KeyInfo,
    KeyStoreError,
    LockedError,
    PublicKey,
    QuorumError,
    Signer,
    Tier,
    UnknownKeyError,
    fingerprint,
)
from iotid.factory.shares import ShareSet
from iotid.factory.softhsm import find_softhsm_module, provision_softhsm_token, unload_module
from iotid.factory.softstore import SoftwareKeyStore
from iotid.spec.algorithms import KeyAlg

META_FILE = "hsmstore.json"
INDEX_DIR = "hsmkeys"
SECRETS_DIR = "secrets"
_FORMAT = "iotid-hsmstore/1"
_KEY_FORMAT = "iotid-hsmstore-key/1"
_LINE_PIN_AAD = b"iotid-hsmstore/1 line PIN"
_CURVES = {KeyAlg.EC_P256: "secp256r1", KeyAlg.EC_P384: "secp384r1"}


def _derive(master: bytes, purpose: bytes, length: int) -> bytes:
    # RFC 5869 HKDF-SHA-256: one master secret, separate keys per purpose.
    return HKDF(hashes.SHA256(), length, None, b"iotid-hsmstore/1 " + purpose).derive(master)


def _pin(master: bytes) -> str:
    return _derive(master, b"user PIN", 16).hex()  # 32 characters: fits common HSM PIN limits


def _public_from_token(obj: Any, alg: KeyAlg) -> PublicKey:
    if alg.is_rsa:
        n = int.from_bytes(obj[Attribute.MODULUS], "big")
        e = int.from_bytes(obj[Attribute.PUBLIC_EXPONENT], "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    # PKCS#11 v2.40 §2.3.3: CKA_EC_POINT is the DER OCTET STRING of the X9.62 point.
    public = serialization.load_der_public_key(encode_ec_public_key(obj))
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise KeyStoreError("the token returned a public key of an unexpected type")
    return public


class _Pkcs11Signer:
    """keystore.Signer over a private key object that never leaves the token."""

    def __init__(self, alg: KeyAlg, private_key: Any, public_key: PublicKey) -> None:
        self._alg, self._key, self._public = alg, private_key, public_key

    def __repr__(self) -> str:
        return f"Pkcs11Signer({self._alg.name}, fingerprint={fingerprint(self._public)[:16]})"

    @property
    def alg(self) -> KeyAlg:
        return self._alg

    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, data: bytes, *, pss: bool = False) -> bytes:
        try:
            if self._alg.is_ec:
                if pss:
                    raise ValueError("PSS applies to RSA keys only")
                digest = hashes.Hash(
                    hashes.SHA384() if self._alg is KeyAlg.EC_P384 else hashes.SHA256()
                )
                digest.update(data)
                raw = bytes(self._key.sign(digest.finalize(), mechanism=Mechanism.ECDSA))
                half = len(raw) // 2  # PKCS#11 v2.40 §2.3.1: r || s, each the order's length
                r, s = int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
                return encode_dss_signature(r, s)
            if pss:  # RFC 8017 §8.1 RSASSA-PSS, MGF1-SHA-256, 32-byte salt
                param = (Mechanism.SHA256, pkcs11.MGF.SHA256, 32)
                return bytes(
                    self._key.sign(
                        data, mechanism=Mechanism.SHA256_RSA_PKCS_PSS, mechanism_param=param
                    )
                )
            return bytes(self._key.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS))
        except pkcs11.PKCS11Error as exc:
            raise KeyStoreError(f"the token refused to sign: {type(exc).__name__}") from None


class Pkcs11KeyStore:
    """FactoryKeyStore over a PKCS#11 token (see the module docstring)."""

    backend = "pkcs11"

    def __init__(self, directory: Path | str, module_path: str, token_label: str) -> None:
        self._dir = Path(directory)
        self._module = module_path
        self._label = token_label
        self._soft = SoftwareKeyStore(self._dir / SECRETS_DIR)
        self._session: Any = None
        self._quorum = False
        self._operational = False

    def __repr__(self) -> str:
        state = "quorum" if self._quorum else "operational" if self._operational else "locked"
        return f"Pkcs11KeyStore({str(self._dir)!r}, token={self._label!r}, unlocked={state})"

    # -- creation, unlocking, closing

    def initialise(self, threshold: int, count: int, *, initial_pin: str) -> ShareSet:
        """Create the store on a token whose user PIN is ``initial_pin``; the PIN is then replaced
        by one only M of the returned N shares recover. Stays unlocked."""
        slip39.check_quorum(threshold, count)
        if (self._dir / META_FILE).exists():
            raise KeyStoreError(f"a PKCS#11 key store already exists in {self._dir}")
        self._login(initial_pin, initial=True)
        master = os.urandom(32)
        share_set = slip39.split(master, threshold, count)
        self._soft.initialise_with_kek(
            _derive(master, b"software-tier KEK", 32),
            identifier=share_set.identifier,
            threshold=threshold,
            count=count,
        )
        pin = _pin(master)
        meta = {
            "format": _FORMAT,
            "token": self._label,
            "identifier": share_set.identifier,
            "threshold": threshold,
            "count": count,
            "line_pin": seal(self._soft.create_line_key(), pin.encode(), _LINE_PIN_AAD),
        }
        write_new(self._dir / META_FILE, meta)
        try:
            self._session.set_pin(initial_pin, pin)  # C_SetPIN: last, once all files exist
        except pkcs11.PKCS11Error as exc:
            raise KeyStoreError(f"the token refused the PIN change: {type(exc).__name__}") from None
        self._quorum = self._operational = True
        return share_set

    def unlock_quorum(self, shares: Sequence[str]) -> None:
        meta = self._meta()
        master = slip39.combine(shares, expected_identifier=meta["identifier"], count=meta["count"])
        # Checked against the software tier first (AES-GCM), so wrong shares never cost a PIN try.
        self._soft.unlock_quorum_kek(_derive(master, b"software-tier KEK", 32))
        self._login(_pin(master))
        self._quorum = self._operational = True

    def create_line_key(self) -> bytes:
        if not self._quorum:
            raise LockedError(f"releasing the line key needs {self._quorum_text()}")
        return self._soft.create_line_key()

    def unlock_operational(self, line_key: bytes) -> None:
        line_key = normalise_line_key(line_key)
        self._soft.unlock_operational(line_key)
        pin = unseal(line_key, self._meta()["line_pin"], _LINE_PIN_AAD)
        if pin is None:
            raise KeyStoreError(f"the line PIN in {self._dir / META_FILE} failed authentication")
        self._login(pin.decode())
        self._operational = True

    def close(self) -> None:
        """Close the session (which logs this process out of the token) and forget the tiers."""
        self._soft.lock()
        self._quorum = self._operational = False
        if self._session is not None:
            session, self._session = self._session, None
            # Already closed, or logged out by another store on this token: nothing to do.
            with contextlib.suppress(pkcs11.PKCS11Error):
                session.close()

    lock = close

    def __enter__(self) -> Pkcs11KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unlocked(self, tier: Tier) -> bool:
        return self._quorum or (tier is Tier.OPERATIONAL and self._operational)

    # -- keys

    def keys(self) -> list[KeyInfo]:
        folder = self._dir / INDEX_DIR
        paths = folder.rglob("*.json") if folder.is_dir() else iter(())
        names = sorted(p.relative_to(folder).with_suffix("").as_posix() for p in paths)
        infos = [self._info(self._record(name)) for name in names]
        return sorted(infos + self._soft.keys(), key=lambda info: info.name)

    def generate(self, name: str, alg: KeyAlg, *, tier: Tier) -> PublicKey:
        self._require(tier, f"generating the {name} key")
        self._check_free(name)
        if not (alg.is_ec or alg.is_rsa):
            raise ValueError(f"{alg.name} is not a key-pair algorithm; use generate_secret")
        key_id = tier.value.encode() + b"/" + os.urandom(8)
        private_template = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.MODIFIABLE: False,
        }
        public_template: dict[Attribute, Any] = {Attribute.TOKEN: True, Attribute.PRIVATE: False}
        if alg.is_ec:
            public_template[Attribute.EC_PARAMS] = encode_named_curve_parameters(_CURVES[alg])
        common: dict[str, Any] = {
            "store": True,
            "label": name,
            "id": key_id,
            "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
            "public_template": public_template,
            "private_template": private_template,
        }
        try:
            if alg.is_ec:
                pub, _ = self._session.generate_keypair(KeyType.EC, **common)
            else:
                pub, _ = self._session.generate_keypair(KeyType.RSA, alg.size_bits, **common)
        except pkcs11.PKCS11Error as exc:
            raise KeyStoreError(
                f"the token could not generate {name}: {type(exc).__name__}"
            ) from None
        public = _public_from_token(pub, alg)
        record = {
            "format": _KEY_FORMAT,
            "name": name,
            "alg": alg.name,
            "tier": tier.value,
            "id": key_id.hex(),
            "fingerprint": fingerprint(public),
            "public_key": public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ).hex(),
        }
        write_new(self._dir / INDEX_DIR / f"{name}.json", record)
        return public

    def generate_secret(
        self, name: str, length: int = 32, *, tier: Tier = Tier.OPERATIONAL
    ) -> None:
        self._check_free(name)
        self._soft.generate_secret(name, length, tier=tier)

    def public_key(self, name: str) -> PublicKey:
        if self._soft.has_key(name):
            raise KeyStoreError(f"{name} is a secret, not a key pair")
        return self._public(self._record(name))

    def signer(self, name: str) -> Signer:
        if self._soft.has_key(name):
            raise KeyStoreError(f"{name} is a secret, not a key pair")
        record = self._record(name)
        tier, alg = Tier(record["tier"]), KeyAlg[record["alg"]]
        self._require(tier, f"the {name} key")
        key_id = bytes.fromhex(record["id"])
        try:
            private = self._session.get_key(ObjectClass.PRIVATE_KEY, label=name, id=key_id)
            token_public = self._session.get_key(ObjectClass.PUBLIC_KEY, label=name, id=key_id)
        except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned) as exc:
            raise KeyStoreError(
                f"the token holds no unique key {name}: {type(exc).__name__}"
            ) from None
        public = _public_from_token(token_public, alg)
        if fingerprint(public) != record["fingerprint"] or not key_id.startswith(
            tier.value.encode() + b"/"
        ):
            raise KeyStoreError(f"the index entry for {name} does not match the token's key")
        return _Pkcs11Signer(alg, private, public)

    def secret(self, name: str) -> bytes:
        return self._soft.secret(name)

    # -- internals

    def _meta(self) -> dict[str, Any]:
        try:
            meta = read_json(self._dir / META_FILE, "the key store metadata")
        except FileNotFoundError:
            raise KeyStoreError(f"no PKCS#11 key store in {self._dir}") from None
        if meta.get("format") != _FORMAT or not all(
            isinstance(meta.get(k), int) for k in ("identifier", "threshold", "count")
        ):
            raise KeyStoreError(f"{self._dir / META_FILE} is not a {_FORMAT} file")
        return meta

    def _quorum_text(self) -> str:
        meta = self._meta()
        return f"{meta['threshold']} of {meta['count']} shares"

    def _require(self, tier: Tier, what: str) -> None:
        if self.unlocked(tier):
            return
        if tier is Tier.QUORUM:
            raise LockedError(f"{what} needs {self._quorum_text()} (quorum tier locked)")
        raise LockedError(
            f"{what} needs the line key or {self._quorum_text()} (operational tier locked)"
        )

    def _token(self) -> Any:
        try:
            return pkcs11.lib(self._module).get_token(token_label=self._label)
        except pkcs11.NoSuchToken:
            raise KeyStoreError(
                f"no token labelled {self._label!r} in {self._module} (SoftHSM2: check "
                "SOFTHSM2_CONF; a token created after the module was loaded needs unload_module)"
            ) from None
        except (OSError, RuntimeError) as exc:
            raise KeyStoreError(f"cannot load PKCS#11 module {self._module}: {exc}") from None

    def _login(self, pin: str, *, initial: bool = False) -> None:
        if self._session is not None:
            return  # one login per store; the PIN was checked before we got here
        token = self._token()
        try:
            self._session = token.open(rw=True, user_pin=pin)
        except pkcs11.UserAlreadyLoggedIn:
            self._session = token.open(rw=True)  # another store in this process logged in
        except pkcs11.PinIncorrect:
            if initial:
                raise KeyStoreError(f"token {self._label!r} refused the initial user PIN") from None
            raise QuorumError(
                f"the shares open this store's files but token {self._label!r} refused the PIN: "
                "was its PIN changed outside the ceremony?"
            ) from None
        except pkcs11.PKCS11Error as exc:
            raise KeyStoreError(f"cannot log in to {self._label!r}: {type(exc).__name__}") from None

    def _check_free(self, name: str) -> None:
        check_name(name)
        if self._soft.has_key(name) or (self._dir / INDEX_DIR / f"{name}.json").exists():
            raise KeyStoreError(f"a key named {name} already exists")
        if self._session is not None and list(self._session.get_objects({Attribute.LABEL: name})):
            raise KeyStoreError(f"token {self._label!r} already holds an object labelled {name}")

    def _record(self, name: str) -> dict[str, Any]:
        path = self._dir / INDEX_DIR / f"{check_name(name)}.json"
        try:
            record = read_json(path, f"the index entry for {name}")
        except FileNotFoundError:
            raise UnknownKeyError(f"no key named {name}") from None
        if not (
            record.get("format") == _KEY_FORMAT
            and record.get("name") == name
            and record.get("alg") in KeyAlg.__members__
            and record.get("tier") in {t.value for t in Tier}
            and isinstance(record.get("id"), str)
            and isinstance(record.get("public_key"), str)
        ):
            raise KeyStoreError(f"the index entry for {name} is corrupt or was tampered with")
        return record

    def _public(self, record: dict[str, Any]) -> PublicKey:
        try:
            public = serialization.load_der_public_key(bytes.fromhex(record["public_key"]))
        except ValueError:
            public = None
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or (
            fingerprint(public) != record.get("fingerprint")
        ):
            raise KeyStoreError(f"the index entry for {record['name']} was tampered with")
        return public

    def _info(self, record: dict[str, Any]) -> KeyInfo:
        public = self._public(record)
        return KeyInfo(
            record["name"], KeyAlg[record["alg"]], Tier(record["tier"]), fingerprint(public)
        )


__all__ = [
    "META_FILE",
    "Pkcs11KeyStore",
    "find_softhsm_module",
    "provision_softhsm_token",
    "unload_module",
]

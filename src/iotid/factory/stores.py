"""Choosing a key store backend from configuration: switching a real HSM in is a config change.

Scope: ``DIR/keystore.json`` names the backend of the store in ``DIR``: ``{"backend":
"software"}`` or ``{"backend": "pkcs11", "module": "/path/lib.so", "token": "label"}``.
:func:`create_store` runs a backend's ``initialise`` and writes that file last;
:func:`open_store` reads it and returns the backend, locked. Nothing else in the factory names a
backend class.

HSMs are named with a PKCS#11 URI in the spirit of RFC 7512, of which exactly two attributes are
understood: ``token`` (the token label) and ``module`` (or RFC 7512's query attribute
``module-path``: the PKCS#11 library), e.g. ``pkcs11:token=iotid-root;module=/usr/lib/softhsm/
libsofthsm2.so`` or ``pkcs11:token=iotid-root?module-path=/usr/lib/...``. Values may be
percent-encoded. Any other attribute is refused, ``pin-value`` included: a PIN never belongs in a
configuration (the initial PIN is passed separately and replaced by the ceremony).
Not in scope: the backends themselves (``softstore``, ``hsmstore``).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any, Protocol

from iotid.factory.hsmstore import Pkcs11KeyStore
from iotid.factory.keyfiles import read_json, write_new
from iotid.factory.keystore import FactoryKeyStore, KeyStoreError, Tier
from iotid.factory.shares import ShareSet
from iotid.factory.softstore import SoftwareKeyStore

CONFIG_FILE = "keystore.json"
_FORMAT = "iotid-keystore-config/1"


class ManagedKeyStore(FactoryKeyStore, Protocol):
    """What both backends offer beyond :class:`FactoryKeyStore` (proposed for keystore.py)."""

    def create_line_key(self) -> bytes:
        """The line key for the personalisation line; LockedError unless the quorum is present."""
        ...

    def unlocked(self, tier: Tier) -> bool: ...

    def lock(self) -> None:
        """Forget the unlocked tiers (the PKCS#11 backend also logs out of the token)."""
        ...


def parse_pkcs11_uri(uri: str) -> tuple[str, str]:
    """``pkcs11:token=LABEL;module=/path`` -> (module path, token label); ValueError if not."""
    scheme, colon, body = uri.partition(":")
    if scheme.lower() != "pkcs11" or not colon:
        raise ValueError(f"not a PKCS#11 URI (expected pkcs11:token=...;module=...): {uri!r}")
    path, _, query = body.partition("?")
    attributes: dict[str, str] = {}
    for part in [*path.split(";"), *(query.split("&") if query else [])]:
        if not part:
            continue
        name, equals, value = part.partition("=")
        name = name.strip().lower()
        if not equals or not value:
            raise ValueError(f"malformed PKCS#11 URI attribute {part!r}")
        if name == "module-path":
            name = "module"
        if name in ("pin-value", "pin-source"):
            raise ValueError("a PIN does not belong in the URI: pass the initial PIN separately")
        if name not in ("module", "token"):
            raise ValueError(f"unsupported PKCS#11 URI attribute {name!r} (only token and module)")
        if name in attributes:
            raise ValueError(f"PKCS#11 URI attribute {name!r} given twice")
        attributes[name] = urllib.parse.unquote(value)
    if "module" not in attributes or "token" not in attributes:
        raise ValueError("the PKCS#11 URI needs both token=LABEL and module=/path/to/module.so")
    return attributes["module"], attributes["token"]


def create_store(
    directory: Path | str,
    threshold: int,
    count: int,
    *,
    hsm: str | None = None,
    hsm_pin: str | None = None,
) -> tuple[ManagedKeyStore, ShareSet]:
    """Create a key store in ``directory`` (software, or the PKCS#11 token ``hsm`` names, whose
    current user PIN is ``hsm_pin``). Returns it unlocked, and the N shares to hand out."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).exists():
        raise KeyStoreError(f"a key store already exists in {directory}")
    store: SoftwareKeyStore | Pkcs11KeyStore
    config: dict[str, Any] = {"format": _FORMAT}
    if hsm is None:
        if hsm_pin is not None:
            raise ValueError("an HSM PIN was given without an HSM")
        store = SoftwareKeyStore(directory)
        share_set = store.initialise(threshold, count)
        config["backend"] = store.backend
    else:
        module, token = parse_pkcs11_uri(hsm)
        if hsm_pin is None:
            raise ValueError("creating a store on an HSM needs the token's current user PIN")
        store = Pkcs11KeyStore(directory, module, token)
        share_set = store.initialise(threshold, count, initial_pin=hsm_pin)
        config |= {"backend": store.backend, "module": module, "token": token}
    write_new(directory / CONFIG_FILE, config)
    return store, share_set


def open_store(directory: Path | str, *, hsm_uri: str | None = None) -> ManagedKeyStore:
    """The key store in ``directory``, locked. ``hsm_uri`` overrides the saved module and token
    (the same token seen through another library path or label on this machine)."""
    directory = Path(directory)
    try:
        config = read_json(directory / CONFIG_FILE, "the key store configuration")
    except FileNotFoundError:
        raise KeyStoreError(f"no key store in {directory} ({CONFIG_FILE} missing)") from None
    backend = config.get("backend")
    if backend == "software":
        if hsm_uri is not None:
            raise KeyStoreError(f"the key store in {directory} is a software store, not an HSM")
        return SoftwareKeyStore(directory)
    if backend == "pkcs11":
        if hsm_uri is not None:
            module, token = parse_pkcs11_uri(hsm_uri)
        else:
            saved_module, saved_token = config.get("module"), config.get("token")
            if not isinstance(saved_module, str) or not isinstance(saved_token, str):
                raise KeyStoreError(f"{directory / CONFIG_FILE} lacks the PKCS#11 module or token")
            module, token = saved_module, saved_token
        return Pkcs11KeyStore(directory, module, token)
    raise KeyStoreError(f"{directory / CONFIG_FILE} names an unknown backend {backend!r}")


__all__ = ["CONFIG_FILE", "ManagedKeyStore", "create_store", "open_store", "parse_pkcs11_uri"]

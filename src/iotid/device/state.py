"""The device's non-secret state in flash: what it must remember between boots about the fleet.

Scope: :class:`DeviceState`, a directory holding ``gateway-ca.pem`` (the CA bundle the gateway's
certificate must chain to) and ``device.json`` (public facts: UID, identity epoch, certificate
serial and expiry, gateway address, applied firmware version, the revoked flag, and the journal of
an unfinished key rotation: the request sent and the fleet's answer, so that a crash at any step
can be resumed or abandoned safely). Every write is atomic (temporary file + ``os.replace``).
Not in scope: keys and anything secret (they never leave the secure element; nothing written here
would help an attacker impersonate the device), the certificate chain itself (the card stores it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography import x509

__all__ = ["DeviceState"]

CA_FILE = "gateway-ca.pem"
STATE_FILE = "device.json"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class DeviceState:
    """Key-value public state under ``directory`` (created on first write); ``None``: kept in
    memory only (a device without flash for it, or a test)."""

    def __init__(self, directory: Path | str | None) -> None:
        self.directory = None if directory is None else Path(directory)
        self._data: dict[str, Any] = {}
        self._ca_pem: bytes | None = None
        path = None if self.directory is None else self.directory / STATE_FILE
        if path is not None and path.exists():
            loaded = json.loads(path.read_text())
            if not isinstance(loaded, dict):
                raise ValueError(f"{path} is not a JSON object")
            self._data = loaded

    def __repr__(self) -> str:
        where = "memory" if self.directory is None else str(self.directory)
        return f"DeviceState({where!r})"

    # -- generic ---------------------------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def update(self, **values: Any) -> None:
        """Set (``None`` deletes) keys and write the file atomically."""
        for key, value in values.items():
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(
            self.directory / STATE_FILE,
            json.dumps(self._data, indent=2, sort_keys=True).encode(),
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(self._data)

    # -- the gateway CA bundle -------------------------------------------------------------------
    def save_gateway_ca(self, pem: bytes) -> None:
        certs = x509.load_pem_x509_certificates(pem)  # ValueError if it is not PEM
        if not certs:
            raise ValueError("empty gateway CA bundle")
        self._ca_pem = pem
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.directory / CA_FILE, pem)

    def gateway_ca(self) -> list[x509.Certificate] | None:
        if self._ca_pem is None and self.directory is not None:
            path = self.directory / CA_FILE
            if path.exists():
                self._ca_pem = path.read_bytes()
        return None if self._ca_pem is None else x509.load_pem_x509_certificates(self._ca_pem)

    # -- typed accessors -------------------------------------------------------------------------
    @property
    def gateway(self) -> str | None:
        value = self._data.get("gateway")
        return value if isinstance(value, str) else None

    @property
    def revoked(self) -> bool:
        return bool(self._data.get("revoked", False))

    @property
    def rotation(self) -> dict[str, Any] | None:
        value = self._data.get("rotation")
        return value if isinstance(value, dict) else None

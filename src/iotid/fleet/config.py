"""The fleet's configuration: where its keys and database are, where it listens, its lifetimes.

Scope: :class:`FleetConfig`, read from ``fleet.json`` in the fleet directory that
``iotid fleet init`` writes (next to the keys of ``iotid.fleet.issuing.keys``), with command-line
overrides applied by the caller (:meth:`FleetConfig.with_overrides`). The database defaults to
``sqlite:///<dir>/fleet.sqlite3`` (the embedded default); ``postgresql://...`` for several
processes. ``public_url`` is the operator API's base URL as devices and relying parties reach it:
certificates name ``<public_url>/ocsp`` (AIA) and ``<public_url>/crl/issuing.crl`` (CDP).

Not in scope: loading keys (``FleetKeys``), building services (``iotid.fleet.runtime``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_FILE", "FleetConfig", "FleetConfigError", "parse_hostport"]

CONFIG_FILE = "fleet.json"
CONFIG_FORMAT = "iotid-fleet-config-v1"


class FleetConfigError(Exception):
    """The configuration is missing or wrong (the message says what)."""


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` or ``PORT`` -> (host, port); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    try:
        number = int(port)
    except ValueError:
        raise FleetConfigError(f"{text!r}: expected HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise FleetConfigError(f"{text!r}: port out of range")
    return (host.strip("[]") or default_host), number


@dataclass(frozen=True)
class FleetConfig:
    directory: Path
    db_url: str
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8443
    #: Base URL of the operator API as others reach it (None: http://api_host:api_port).
    public_url: str | None = None
    cert_lifetime: dt.timedelta = dt.timedelta(hours=24)
    nonce_ttl: dt.timedelta = dt.timedelta(minutes=5)
    #: Worker processes of ``iotid fleet serve`` (each runs the API and the gateway).
    workers: int = 1
    #: A readable copy of the ceremony record (``ceremony.jsonl``), so that traces and the
    #: dashboard verify the last link (root -> ceremony entry and its quorum). None: unverified.
    ceremony_record: Path | None = None
    #: Token-free ``POST /v1/enrollment/nonce``: per-client requests per second and burst
    #: (``nonce_rate`` 0 switches the limit off, e.g. for a load test from one address).
    nonce_rate: float = 50.0
    nonce_burst: int = 100

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.api_host}:{self.api_port}"

    @staticmethod
    def default_db_url(directory: Path) -> str:
        return f"sqlite:///{directory.resolve() / 'fleet.sqlite3'}"

    @classmethod
    def load(cls, directory: Path | str) -> FleetConfig:
        base = Path(directory)
        path = base / CONFIG_FILE
        if not path.is_file():
            if not (base / "issuing-ca.pem").is_file():
                raise FleetConfigError(f"{base} is not a fleet directory (run `iotid fleet init`)")
            return cls(base, cls.default_db_url(base))
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("format") != CONFIG_FORMAT:
                raise FleetConfigError(f"{path}: not an {CONFIG_FORMAT} file")
            api_host, api_port = parse_hostport(str(doc.get("api", "127.0.0.1:8080")))
            gw_host, gw_port = parse_hostport(str(doc.get("gateway", "127.0.0.1:8443")))
            return cls(
                base,
                str(doc.get("db") or cls.default_db_url(base)),
                api_host,
                api_port,
                gw_host,
                gw_port,
                doc.get("public_url"),
                dt.timedelta(seconds=int(doc.get("cert_lifetime_s", 86400))),
                dt.timedelta(seconds=int(doc.get("nonce_ttl_s", 300))),
                int(doc.get("workers", 1)),
                Path(doc["ceremony_record"]) if doc.get("ceremony_record") else None,
                float(doc.get("nonce_rate", 50.0)),
                int(doc.get("nonce_burst", 100)),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise FleetConfigError(f"{path}: {exc}") from None

    def save(self) -> Path:
        doc: dict[str, Any] = {
            "format": CONFIG_FORMAT,
            "db": self.db_url,
            "api": f"{self.api_host}:{self.api_port}",
            "gateway": f"{self.gateway_host}:{self.gateway_port}",
            "public_url": self.public_url,
            "cert_lifetime_s": int(self.cert_lifetime.total_seconds()),
            "nonce_ttl_s": int(self.nonce_ttl.total_seconds()),
            "workers": self.workers,
            "ceremony_record": str(self.ceremony_record) if self.ceremony_record else None,
            "nonce_rate": self.nonce_rate,
            "nonce_burst": self.nonce_burst,
        }
        path = self.directory / CONFIG_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def with_overrides(self, **changes: Any) -> FleetConfig:
        """A copy with the given fields replaced (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def __repr__(self) -> str:
        # The URL may carry a password: show the scheme and host only.
        scheme = self.db_url.split(":", 1)[0]
        return f"FleetConfig({str(self.directory)!r}, db={scheme}, api={self.base_url})"

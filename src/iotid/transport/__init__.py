"""How APDUs travel between a host and a card. Bytes only: nothing here knows an applet.

- ``base``: the ``Connection`` (host side) and ``CardLike`` (card side) protocols, the
  ``TransportError`` family, the TRAFFIC log level (the only place raw APDUs are logged).
- ``loopback``: the host and the card in one process.
- ``vpcd``: the card served to pcscd as a vsmartcard virtual card (``VpcdClient``).
- ``pcsc``: the host side over PC/SC (pyscard). Imported lazily, so that this package works
  on machines without libpcsclite.

Not in scope: APDU encoding, chaining, secure messaging (``iotid.apdu``, ``iotid.scp03``), the
card (``iotid.se``) and the host shim (``iotid.host``); none of them is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iotid.transport.base import (
    TRAFFIC,
    CardLike,
    CardRemovedError,
    Connection,
    TransportError,
    log_traffic,
)
from iotid.transport.loopback import LoopbackConnection
from iotid.transport.vpcd import VpcdClient, serve_forever

if TYPE_CHECKING:
    from iotid.transport.pcsc import PcscConnection, list_readers

__all__ = [
    "TRAFFIC",
    "CardLike",
    "CardRemovedError",
    "Connection",
    "LoopbackConnection",
    "PcscConnection",
    "TransportError",
    "VpcdClient",
    "list_readers",
    "log_traffic",
    "serve_forever",
]

_LAZY = frozenset({"PcscConnection", "list_readers"})


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from iotid.transport import pcsc  # noqa: PLC0415  (pyscard needs libpcsclite)

        return getattr(pcsc, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The transport contract: what the host sees of a card, what a transport serves, and its errors.

Scope: the two protocols every transport is written against (``Connection`` on the host side,
``CardLike`` on the card side), the bus-level errors, and the TRAFFIC log level at which raw
APDU bytes may be logged (nowhere else in iotid logs raw APDUs).

Not in scope: APDU encoding, chaining, GET RESPONSE handling, status-word interpretation
(``iotid.apdu``, ``iotid.host``). A status word is never an error here: a transport returns
whatever the card answered, ``9000`` or not. The emulator implementing ``CardLike`` lives in
``iotid.se`` and is never imported by this package.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

__all__ = [
    "TRAFFIC",
    "CardLike",
    "CardRemovedError",
    "Connection",
    "TransportError",
    "log_traffic",
    "logger",
]

#: Log level below DEBUG for raw APDU hex. Enable it deliberately: APDUs can carry wrapped keys.
#: (Not 5: uvicorn names level 5 "TRACE" when the fleet runs in the same process.)
TRAFFIC = 3
logging.addLevelName(TRAFFIC, "TRAFFIC")

#: The package logger; transports log through it or its children (``iotid.transport.vpcd``...).
logger = logging.getLogger("iotid.transport")


class TransportError(Exception):
    """The bus, the reader or the connection failed; the card gave no status word."""


class CardRemovedError(TransportError):
    """The card left the reader (or the virtual card disconnected) during the session."""


@runtime_checkable
class Connection(Protocol):
    """The host's view of one card session: APDU bytes in, response bytes out."""

    @property
    def atr(self) -> bytes:
        """The Answer To Reset the card gave when this connection powered it."""
        ...

    def transmit(self, apdu: bytes) -> bytes:
        """Send one command APDU; return the response data followed by SW1 SW2.

        Raises ``TransportError`` (or ``CardRemovedError``) when no response arrives.
        """
        ...

    def close(self) -> None:
        """End the session. Idempotent. Later ``transmit`` calls raise ``TransportError``."""
        ...


@runtime_checkable
class CardLike(Protocol):
    """What a card-side transport serves: a card as a ``bytes -> bytes`` function plus power.

    ``process`` is expected never to raise (a card answers 6F00 to its own failures);
    transports still guard against it.
    """

    @property
    def atr(self) -> bytes:
        """The card's Answer To Reset (ISO 7816-3 §8)."""
        ...

    def process(self, apdu: bytes) -> bytes:
        """Execute one command APDU; return response data || SW1 SW2."""
        ...

    def power_on(self) -> bytes:
        """Cold reset (ISO 7816-3 §6.2.2): transient state cleared; returns the ATR."""
        ...

    def reset(self) -> bytes:
        """Warm reset (ISO 7816-3 §6.2.3): transient state cleared; returns the ATR."""
        ...

    def power_off(self) -> None:
        """Deactivation (ISO 7816-3 §6.4): transient state is lost."""
        ...


def log_traffic(direction: str, data: bytes, log: logging.Logger = logger) -> None:
    """Log raw APDU bytes at TRAFFIC level only; ``direction`` is ``">>"`` or ``"<<"``."""
    if log.isEnabledFor(TRAFFIC):
        log.log(TRAFFIC, "%s %s", direction, data.hex().upper())

"""In-process transport: the host talks to a card object in the same process.

Scope: ``LoopbackConnection``, a ``Connection`` whose ``transmit`` calls ``card.process``
directly, with the power sequencing of a reader (power on at connect, power off at close).

Not in scope: any framing or bus simulation (``iotid.transport.vpcd`` for PC/SC, the T=1
transport for a faulty I2C bus); which card is served (anything implementing ``CardLike``).
"""

from __future__ import annotations

import threading

from iotid.transport.base import CardLike, Connection, TransportError, log_traffic, logger

__all__ = ["LoopbackConnection"]

_log = logger.getChild("loopback")


class LoopbackConnection(Connection):
    """A ``Connection`` to an in-process card. Thread-safe: transmits are serialised."""

    def __init__(self, card: CardLike) -> None:
        self._card = card
        self._lock = threading.Lock()
        self._atr = bytes(card.power_on())  # cold reset, as a reader does at connect
        self._closed = False
        _log.debug("loopback connection opened (ATR %d bytes)", len(self._atr))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"LoopbackConnection({type(self._card).__name__}, {state})"

    @property
    def atr(self) -> bytes:
        return self._atr

    @property
    def closed(self) -> bool:
        return self._closed

    def transmit(self, apdu: bytes) -> bytes:
        """Hand ``apdu`` to ``card.process``; a card that raises becomes a ``TransportError``."""
        if not apdu:
            raise ValueError("empty command APDU")
        with self._lock:
            if self._closed:
                raise TransportError("loopback connection is closed")
            log_traffic(">>", apdu, _log)
            try:
                response = bytes(self._card.process(bytes(apdu)))
            except Exception as exc:
                # A real card would have answered 6F00; surface the bug with its cause chained.
                raise TransportError(f"card raised {type(exc).__name__}") from exc
            log_traffic("<<", response, _log)
        if len(response) < 2:  # ISO 7816-4 §5.1: a response ends with SW1 SW2
            raise TransportError(f"malformed response: {len(response)} bytes, no status word")
        return response

    def close(self) -> None:
        """Power the card off. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._card.power_off()
        _log.debug("loopback connection closed")

    def __enter__(self) -> LoopbackConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""Host side over PC/SC: a ``Connection`` to a card in a pcscd reader, through pyscard.

Scope: listing readers, choosing one (exact name, substring, or the first with a card),
waiting for a card, transmitting APDUs with whatever protocol pcscd negotiated from the ATR,
and mapping pyscard's exceptions to ``TransportError`` / ``CardRemovedError``. pyscard is
untyped: its objects never leave this module.

Not in scope: starting pcscd (``scripts/services.sh``), the virtual card behind the reader
(``iotid.transport.vpcd``), GET RESPONSE / chaining (``iotid.apdu`` and the host shim).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from smartcard import scard
from smartcard.Exceptions import CardConnectionException, NoCardException, SmartcardException
from smartcard.pcsc.PCSCExceptions import BaseSCardException
from smartcard.pcsc.PCSCReader import PCSCReader
from smartcard.System import readers as _pyscard_readers

from iotid.transport.base import CardRemovedError, Connection, TransportError, log_traffic, logger

__all__ = ["PcscConnection", "list_readers"]

_log = logger.getChild("pcsc")

_POLL_INTERVAL = 0.1
# pyscard raises two unrelated exception families (smartcard.Exceptions, PCSCExceptions).
_PYSCARD_ERRORS = (SmartcardException, BaseSCardException)

# PC/SC return codes (pcsc-lite pcsclite.h) meaning the card is no longer there.
_REMOVED = frozenset(
    {
        scard.SCARD_W_REMOVED_CARD,
        scard.SCARD_E_NO_SMARTCARD,
        scard.SCARD_W_UNPOWERED_CARD,
        scard.SCARD_E_READER_UNAVAILABLE,
        scard.SCARD_E_UNKNOWN_READER,
    }
)


def _hresult(exc: BaseException) -> int:
    value = getattr(exc, "hresult", -1)
    return value & 0xFFFFFFFF if isinstance(value, int) and value != -1 else -1


def _is_removed(exc: BaseException) -> bool:
    return isinstance(exc, NoCardException) or _hresult(exc) in {
        code & 0xFFFFFFFF for code in _REMOVED
    }


def list_readers() -> list[str]:
    """Names of the PC/SC readers, in pcscd's order. ``TransportError`` if pcscd is not there."""
    try:
        found: list[Any] = list(_pyscard_readers())
    except _PYSCARD_ERRORS as exc:
        raise TransportError(f"PC/SC service unavailable: {exc}") from exc
    return [str(r) for r in found]


def _candidates(names: list[str], wanted: str | None) -> list[str]:
    """Readers to try: all for None/"", the exact name if present, else case-insensitive matches."""
    if not wanted:
        return names
    if wanted in names:
        return [wanted]
    return [n for n in names if wanted.lower() in n.lower()]


class PcscConnection(Connection):
    """A ``Connection`` to the card in a PC/SC reader. Thread-safe: transmits are serialised.

    ``reader`` is a reader name or a substring of one (case-insensitive); None or "" takes the
    first reader holding a card. Waits up to ``timeout`` seconds for a card. ``close`` powers
    the card off (``SCARD_UNPOWER_CARD``), like ``LoopbackConnection``.
    """

    def __init__(self, reader: str | None = None, *, timeout: float = 5.0) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._conn: Any = None
        self._reader = ""
        deadline = time.monotonic() + timeout
        while True:
            conn, name, reason = self._find(reader)
            if conn is not None:
                self._conn, self._reader = conn, name
                break
            if time.monotonic() >= deadline:
                raise TransportError(f"no card within {timeout:g} s: {reason}")
            time.sleep(_POLL_INTERVAL)
        try:
            self._atr = bytes(self._conn.getATR())
        except _PYSCARD_ERRORS as exc:
            self._release()
            raise self._error(exc, "reading the ATR") from exc
        _log.info("connected to the card in %r", self._reader)

    @classmethod
    def _find(cls, wanted: str | None) -> tuple[Any, str, str]:
        """One pass over the readers: (connection, reader name, "") or (None, "", why not)."""
        try:
            names = list_readers()
        except TransportError as exc:
            return None, "", str(exc)
        candidates = _candidates(names, wanted)
        if not candidates:
            listing = ", ".join(names) or "none"
            return None, "", f"no reader matches {wanted or 'any'!r} (readers: {listing})"
        reasons = []
        for name in candidates:
            conn, why = cls._try_connect(name)
            if conn is not None:
                return conn, name, ""
            reasons.append(why)
        return None, "", "; ".join(reasons)

    @staticmethod
    def _try_connect(name: str) -> tuple[Any, str]:
        """Connect to ``name``; (connection, "") or (None, why not)."""
        conn: Any = None
        try:
            conn = PCSCReader(name).createConnection()
            conn.connect()  # shared mode, T=0 or T=1 as the ATR allows
        except _PYSCARD_ERRORS as exc:
            if conn is not None:
                try:
                    conn.release()
                except _PYSCARD_ERRORS:
                    _log.debug("releasing a failed connection to %r failed", name)
            if isinstance(exc, NoCardException):
                return None, f"no card in {name!r}"
            return None, f"{name!r}: {exc}"
        return conn, ""

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"PcscConnection({self._reader!r}, {state})"

    @property
    def atr(self) -> bytes:
        return self._atr

    @property
    def reader(self) -> str:
        """The name of the reader this connection uses."""
        return self._reader

    @property
    def closed(self) -> bool:
        return self._closed

    def _error(self, exc: Exception, doing: str) -> TransportError:
        if _is_removed(exc):
            return CardRemovedError(f"card removed from {self._reader!r} while {doing}")
        return TransportError(f"PC/SC error from {self._reader!r} while {doing}: {exc}")

    def transmit(self, apdu: bytes) -> bytes:
        if not apdu:
            raise ValueError("empty command APDU")
        with self._lock:
            if self._closed:
                raise TransportError("PC/SC connection is closed")
            log_traffic(">>", apdu, _log)
            try:
                data, sw1, sw2 = self._conn.transmit(list(apdu))
            except CardConnectionException as exc:
                if _hresult(exc) == scard.SCARD_W_RESET_CARD & 0xFFFFFFFF:
                    self._acknowledge_reset()
                    raise TransportError(
                        f"card in {self._reader!r} was reset by another application"
                    ) from exc
                raise self._error(exc, "transmitting") from exc
            except _PYSCARD_ERRORS as exc:
                raise self._error(exc, "transmitting") from exc
            response = bytes(data) + bytes((sw1, sw2))
            log_traffic("<<", response, _log)
            return response

    def _acknowledge_reset(self) -> None:
        """After another application reset the card, re-attach the handle (the session is lost)."""
        disposition = self._conn.disposition
        try:
            self._conn.reconnect(disposition=scard.SCARD_LEAVE_CARD)
        except _PYSCARD_ERRORS:
            _log.debug("reconnect after reset failed", exc_info=True)
        self._conn.disposition = disposition  # close still powers the card off

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.disconnect()
        except _PYSCARD_ERRORS:
            _log.debug("disconnect from %r failed", self._reader, exc_info=True)
        try:
            conn.release()
        except _PYSCARD_ERRORS:
            _log.debug("releasing the PC/SC context failed", exc_info=True)

    def close(self) -> None:
        """Disconnect, powering the card off. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._release()
        _log.info("disconnected from %r", self._reader)

    def __enter__(self) -> PcscConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""The card as a vsmartcard *vpcd* client: pcscd and every PC/SC program see it as a real card.

vsmartcard's vpcd is a pcscd reader driver that listens on TCP (35963 for its first slot); the
virtual card is the TCP *client*. Both directions use frames of a 2-byte big-endian length
followed by the payload. From the reader, a 1-byte payload is a control message (power off,
power on, reset, get ATR); anything longer is a command APDU. The card answers a command APDU
and a get-ATR with one frame each and answers nothing to the power messages. (Protocol as in
vsmartcard's ``vpcd.c``/``ifd-vpcd.c`` and its reference client ``vicc``.)

Scope: ``VpcdClient`` (connect, serve frames, reconnect, stop promptly) and ``serve_forever``
(run it in the foreground until SIGTERM/SIGINT). The card is any ``CardLike``.

Not in scope: the reader side (pcscd, the vpcd driver; ``scripts/services.sh`` starts them),
the host side (``iotid.transport.pcsc``), and what the APDUs mean.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable
from enum import IntEnum, unique
from types import FrameType
from typing import Any

from iotid.spec.iso7816 import SW
from iotid.transport.base import CardLike, log_traffic, logger

__all__ = [
    "VPCD_DEFAULT_HOST",
    "VPCD_DEFAULT_PORT",
    "VpcdClient",
    "VpcdControl",
    "parse_endpoint",
    "serve_forever",
]

_log = logger.getChild("vpcd")

VPCD_DEFAULT_HOST = "127.0.0.1"
#: vpcd's first slot (``CHANNELID 0x8C7B`` in Debian's /etc/reader.conf.d/vpcd).
VPCD_DEFAULT_PORT = 35963

_LENGTH_BYTES = 2  # frame header: big-endian payload length
_MAX_PAYLOAD = 0xFFFF
_POLL_INTERVAL = 0.1  # seconds between checks of the stop flag while blocked on the socket
_CONNECT_TIMEOUT = 0.5


@unique
class VpcdControl(IntEnum):
    """1-byte control payloads sent by the vpcd reader (vsmartcard ``vpcd.h``)."""

    POWER_OFF = 0x00
    POWER_ON = 0x01
    RESET = 0x02
    GET_ATR = 0x04


class _ConnectionLostError(Exception):
    """The reader closed the connection or the card cannot stay inserted."""


def parse_endpoint(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT``, ``HOST`` or ``:PORT`` (defaults 127.0.0.1 and 35963)."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, ""
    host = host.strip("[]") or VPCD_DEFAULT_HOST
    if not port_text:
        return host, VPCD_DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid vpcd port in {text!r}")
    return host, int(port_text)


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(_LENGTH_BYTES, "big") + payload


class VpcdClient:
    """Serve one ``CardLike`` to a vpcd reader, reconnecting until stopped.

    A lost connection is a card removal: the card is powered off, and the client reconnects
    after ``reconnect_delay`` seconds. ``stop()`` (or the event given to ``run``) makes ``run``
    return within a fraction of a second.
    """

    def __init__(
        self,
        card: CardLike,
        host: str = VPCD_DEFAULT_HOST,
        port: int = VPCD_DEFAULT_PORT,
        *,
        reconnect_delay: float = 0.5,
    ) -> None:
        self._card = card
        self._host = host
        self._port = port
        self._reconnect_delay = reconnect_delay
        self._stop_requested = threading.Event()
        self._external_stop: threading.Event | None = None
        self._connected = threading.Event()

    def __repr__(self) -> str:
        return f"VpcdClient({self._host}:{self._port}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        """True while a reader connection is open."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until connected to the reader (or ``timeout``); return whether connected."""
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Ask ``run`` to return; it closes the connection and powers the card off."""
        self._stop_requested.set()

    def _stopping(self) -> bool:
        ext = self._external_stop
        return self._stop_requested.is_set() or (ext is not None and ext.is_set())

    def _sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``, waking early when stopped."""
        remaining = seconds
        while remaining > 0 and not self._stopping():
            step = min(_POLL_INTERVAL, remaining)
            self._stop_requested.wait(step)
            remaining -= step

    def run(self, stop: threading.Event | None = None) -> None:
        """Connect and serve until ``stop`` is set or ``stop()`` is called."""
        self._external_stop = stop
        failures = 0
        try:
            while not self._stopping():
                sock = self._connect(failures)
                if sock is None:
                    failures += 1
                else:
                    failures = 0
                    self._session(sock)
                self._sleep(self._reconnect_delay)
        finally:
            self._external_stop = None

    def _connect(self, failures: int) -> socket.socket | None:
        """One attempt to reach the reader; a warning for the first failure in a row only."""
        try:
            sock = socket.create_connection((self._host, self._port), timeout=_CONNECT_TIMEOUT)
        except OSError as exc:
            level = logging.DEBUG if failures else logging.WARNING
            _log.log(level, "cannot reach vpcd reader at %s:%d (%s)", self._host, self._port, exc)
            return None
        try:
            if sock.getsockname() != sock.getpeername():
                return sock
            # TCP simultaneous open to itself: nothing listens on that (ephemeral) port.
        except OSError:
            pass
        sock.close()
        return None

    def _session(self, sock: socket.socket) -> None:
        """One reader connection: serve frames until it drops or we are stopped."""
        reason = "stopped"
        try:
            sock.settimeout(_POLL_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connected.set()
            _log.info("connected to vpcd reader at %s:%d", self._host, self._port)
            self._serve(sock)
        except _ConnectionLostError as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"socket error: {exc}"
        finally:
            self._connected.clear()
            sock.close()
            self._safe(self._card.power_off, "power off")
            _log.info("disconnected from vpcd reader at %s:%d (%s)", self._host, self._port, reason)

    def _recv_exact(self, sock: socket.socket, size: int) -> bytes | None:
        """Read exactly ``size`` bytes; None when stopped first."""
        buf = bytearray()
        while len(buf) < size:
            if self._stopping():
                return None
            try:
                chunk = sock.recv(size - len(buf))
            except TimeoutError:
                continue
            if not chunk:
                raise _ConnectionLostError("reader closed the connection")
            buf += chunk
        return bytes(buf)

    def _serve(self, sock: socket.socket) -> None:
        while True:
            header = self._recv_exact(sock, _LENGTH_BYTES)
            if header is None:
                return
            size = int.from_bytes(header, "big")
            if size == 0:
                _log.debug("ignoring empty frame from the reader")
                continue
            payload = self._recv_exact(sock, size)
            if payload is None:
                return
            # vpcd.h: a 1-byte payload is control (VPCD_CTRL_LEN); an APDU has at least 4 bytes.
            answer = self._control(payload[0]) if size == 1 else self._apdu(payload)
            if answer is not None:
                sock.sendall(_frame(answer))

    def _control(self, code: int) -> bytes | None:
        """Handle a control message; returns the frame payload to send back, if any."""
        if code == VpcdControl.GET_ATR:
            try:
                atr = bytes(self._card.atr)
            except Exception:
                _log.exception("card failed to give its ATR")
                atr = b""
            if not atr or len(atr) > _MAX_PAYLOAD:
                # An empty frame tells vpcd the card is gone; say it by disconnecting instead.
                raise _ConnectionLostError("card has no ATR")
            return atr
        actions: dict[int, tuple[str, Callable[[], object]]] = {
            VpcdControl.POWER_OFF: ("power off", self._card.power_off),
            VpcdControl.POWER_ON: ("power on", self._card.power_on),
            VpcdControl.RESET: ("reset", self._card.reset),
        }
        if code not in actions:
            _log.warning("unknown vpcd control message 0x%02X ignored", code)
            return None
        name, action = actions[code]
        _log.debug("reader: %s", name)
        self._safe(action, name)
        return None

    def _apdu(self, apdu: bytes) -> bytes:
        log_traffic(">>", apdu, _log)
        try:
            response = bytes(self._card.process(apdu))
        except Exception:
            _log.exception("card raised while processing an APDU; answering 6F00")
            response = b""
        if not 2 <= len(response) <= _MAX_PAYLOAD:  # ISO 7816-4 §5.1: data || SW1 SW2
            if response:
                _log.error("card gave a malformed response (%d bytes); 6F00", len(response))
            response = SW.UNKNOWN.to_bytes(2, "big")
        log_traffic("<<", response, _log)
        return response

    @staticmethod
    def _safe(action: Callable[[], object], name: str) -> None:
        try:
            action()
        except Exception:
            _log.exception("card failed to %s", name)


def serve_forever(card: CardLike, host: str, port: int) -> int:
    """Serve ``card`` to the vpcd reader at ``host:port`` until SIGTERM or SIGINT; return 0.

    Signal handlers are installed only when called from the main thread and are restored on
    return.
    """
    stop = threading.Event()
    received: list[int] = []

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)
    client = VpcdClient(card, host, port)
    try:
        client.run(stop)
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot be restored
                signal.signal(sig, handler)
    if received:
        _log.info("stopped by %s", signal.Signals(received[0]).name)
    return 0

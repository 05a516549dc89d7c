"""A scripted ``CardLike`` for the transport unit tests (no emulator: transports carry bytes)."""

from __future__ import annotations

import threading

FAKE_ATR = bytes.fromhex("3B88800180494F544944464BDB")


class ScriptedCard:
    """Records every call; answers an APDU with ``b"R" + apdu + 9000`` unless told otherwise."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.apdus: list[bytes] = []
        self.fail_with: BaseException | None = None
        self.response: bytes | None = None  # fixed answer instead of the echo
        self.atr_value = FAKE_ATR
        self.powered = False
        self.lock = threading.Lock()

    @property
    def atr(self) -> bytes:
        if not self.atr_value:
            raise RuntimeError("no ATR")
        return self.atr_value

    def power_on(self) -> bytes:
        with self.lock:
            self.events.append("power_on")
            self.powered = True
        return self.atr

    def reset(self) -> bytes:
        with self.lock:
            self.events.append("reset")
            self.powered = True
        return self.atr

    def power_off(self) -> None:
        with self.lock:
            self.events.append("power_off")
            self.powered = False

    def process(self, apdu: bytes) -> bytes:
        with self.lock:
            self.events.append("process")
            self.apdus.append(apdu)
        if self.fail_with is not None:
            raise self.fail_with
        if self.response is not None:
            return self.response
        return b"R" + apdu + b"\x90\x00"

"""Resolve "which secure element" for the CLI and the device application.

Scope: a target is a card state directory (the emulator, in-process over the loopback
transport), ``pcsc:READER`` (a real or virtual reader through pcscd; ``pcsc:`` alone takes the
first reader with a card), or an existing connection. This module is the one place allowed to
wire the emulator (``iotid.se``) to the host shim (``iotid.host``); the host itself never imports
the card, so the same device code runs against silicon.
Not in scope: what is sent to the card.
"""

from __future__ import annotations

from pathlib import Path

from iotid.se import Card
from iotid.transport.base import Connection
from iotid.transport.loopback import LoopbackConnection

PCSC_PREFIX = "pcsc:"


class TargetError(ValueError):
    """The target names no usable secure element."""


def open_connection(target: str | Path | Connection) -> Connection:
    if not isinstance(target, (str, Path)):
        return target
    text = str(target)
    if text.startswith(PCSC_PREFIX):
        # libpcsclite is only needed for pcsc: targets, so the import waits until one is used.
        from iotid.transport.pcsc import PcscConnection  # noqa: PLC0415

        return PcscConnection(text[len(PCSC_PREFIX) :] or None)
    path = Path(text)
    if not (path / "nvm.bin").exists():
        raise TargetError(f"{path} is not a card state directory (create one with `iotid se new`)")
    return LoopbackConnection(Card.open(path))

"""Child process for the rotation tearing tests: run ROTATE or COMMIT and die mid-way.

Usage: ``python rotation_tearing_child.py STATE_DIR N rotate``
       ``python rotation_tearing_child.py STATE_DIR N commit ACK_HEX``

The card in ``STATE_DIR`` (durable NVM, the rotation applet installed) is opened and
``Nvm._write_point`` is replaced by a counter that sends this process ``SIGKILL`` when the count
reaches ``N`` (``N`` = 0: never). ``rotate`` sends ROTATE with :data:`NONCE`; ``commit`` sends
COMMIT with the acknowledgement given in hex. When the command finishes the child prints
``POINTS <count>``, one ``POINT <i> <label>`` line per write point (1-based), and ``DONE``.

Not covered here: the checks (``test_rotation_tearing.py`` reopens the card in the parent).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from unittest import mock

from iotid.host.protocol import SmartCardProtocol
from iotid.host.rotation import RotationSession
from iotid.se import Card, Nvm
from iotid.se.applets.rotation import RotationApplet
from iotid.transport.loopback import LoopbackConnection

NONCE = bytes(range(0x40, 0x60))


class _Tear:
    """Counts write points; kills this process with SIGKILL at point number ``kill_at``."""

    def __init__(self, kill_at: int) -> None:
        self.kill_at = kill_at
        self.labels: list[str] = []

    def __call__(self, label: str) -> None:
        self.labels.append(label)
        if len(self.labels) == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    state_dir, kill_at, mode = Path(argv[1]), int(argv[2]), argv[3]
    tear = _Tear(kill_at)
    card = Card.open(state_dir, applets=[RotationApplet])
    with mock.patch.object(Nvm, "_write_point", tear):
        session = RotationSession(SmartCardProtocol(LoopbackConnection(card)))
        if mode == "rotate":
            session.rotate(NONCE)
        elif mode == "commit":
            session.commit(bytes.fromhex(argv[4]))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    print(f"POINTS {len(tear.labels)}")
    for i, label in enumerate(tear.labels, 1):
        print(f"POINT {i} {label}")
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

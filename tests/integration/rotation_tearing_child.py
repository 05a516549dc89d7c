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

import sys
from pathlib import Path

from iotid.host.protocol import SmartCardProtocol
from iotid.host.rotation import RotationSession
from iotid.se import Card
from iotid.se.applets.rotation import RotationApplet
from iotid.transport.loopback import LoopbackConnection

# tests/ on the path for the shared harness (this file runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.tearing import ChildArgs, report, tearing

NONCE = bytes(range(0x40, 0x60))


def main(argv: list[str]) -> int:
    args = ChildArgs.parse(argv)
    card = Card.open(args.state, applets=[RotationApplet])
    with tearing(args.kill_at) as tear:
        session = RotationSession(SmartCardProtocol(LoopbackConnection(card)))
        if args.mode == "rotate":
            session.rotate(NONCE)
        elif args.mode == "commit":
            session.commit(bytes.fromhex(args.rest[0]))
        else:
            raise SystemExit(f"unknown mode {args.mode!r}")
    report(tear)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

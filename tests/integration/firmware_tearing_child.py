"""Child process for the firmware tearing tests: run CONFIRM (or FINISH) on a card in a state
directory and die with SIGKILL at NVM write point N.

Usage: ``python firmware_tearing_child.py STATE_DIR N MODE [--volatile]``

The card in ``STATE_DIR`` (a personalised :class:`FirmwareApplet`) is opened with ``Card.open``
(``--volatile``: ``durable=False``) and ``Nvm._write_point`` is replaced by a counter that sends
this process ``SIGKILL`` when the count reaches ``N`` (``N`` = 0: never). Modes:

- ``confirm``: select the firmware applet and CONFIRM (raises the floor to the last VALID
  verdict's security counter: one record, one NVM transaction);
- ``finish``: verify :data:`NEXT_IMAGE` (raw mode, security counter :data:`NEXT_COUNTER`): BEGIN
  and UPDATE write nothing, FINISH records the new last verdict.

When the operation finishes it prints ``POINTS <count>``, one ``POINT <i> <label>`` line per write
point, the result (``FLOOR <n>`` or ``VERDICT <reason>``) and ``DONE``.

Not covered here: the checks (``test_firmware_tearing.py`` reopens the card in the parent).
"""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from iotid.crypto.firmware_raw import sign_raw_image
from iotid.crypto.mcuboot import ImageVersion
from iotid.host import SmartCardProtocol
from iotid.host.firmware import FirmwareSession
from iotid.se import Card
from iotid.se.applets.firmware import FirmwareApplet
from iotid.transport.loopback import LoopbackConnection

# tests/ on the path for the shared harness (this file runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.tearing import ChildArgs, report, tearing

#: The firmware issuance key of the test cards (deterministic, so parent and child agree).
ISSUER = ec.derive_private_key(0x5EC0DE, ec.SECP256R1())
OLD_FLOOR = 3
VALID_COUNTER = 7  # the last verdict the pristine card holds
NEXT_COUNTER = 9
VERSION = ImageVersion(1, 0, 0)
NEXT_IMAGE = bytes(range(256)) * 64


def raw_image(counter: int) -> tuple[bytes, bytes]:
    """A raw image and its detached signature for ``counter``."""
    data = NEXT_IMAGE if counter == NEXT_COUNTER else bytes(1000) + bytes([counter])
    return data, sign_raw_image(ISSUER, data, version=VERSION, security_counter=counter)


def main(argv: list[str]) -> int:
    args = ChildArgs.parse(argv)
    card = Card.open(args.state, durable=args.durable, applets=[FirmwareApplet])
    session = FirmwareSession(SmartCardProtocol(LoopbackConnection(card)))
    with tearing(args.kill_at) as tear:
        if args.mode == "confirm":
            result = f"FLOOR {session.confirm()}"
        elif args.mode == "finish":
            data, sig = raw_image(NEXT_COUNTER)
            session.begin_raw(length=len(data), version=VERSION, security_counter=NEXT_COUNTER)
            for i in range(0, len(data), 255):
                session.update(data[i : i + 255])
            result = f"VERDICT {session.finish(sig).reason}"
        else:
            raise SystemExit(f"unknown mode {args.mode!r}")
    report(tear, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Child process for the provisioning tearing tests: run PROVISION (or a re-key) and die mid-way.

Usage: ``python provisioning_child.py STATE_DIR N MODE``

The card in ``STATE_DIR`` (a provisioning applet personalised with :data:`MASTER`,
:data:`ALG` and the re-key authority :data:`OPERATOR`) is opened, and ``Nvm._write_point`` is
replaced by a counter that sends this process ``SIGKILL`` when the count reaches ``N``
(``N`` = 0: never). Modes:

- ``provision``: PROVISION.
- ``rekey``: GET REKEY CHALLENGE, then REKEY with the operator's signature (the child plays
  the operator too: it holds :data:`OPERATOR`, which a real device never does).

When the operation finishes it prints ``POINTS <count>``, one ``POINT <i> <label>`` line per write
point (1-based, in order), and ``DONE``. The pattern is ``tearing_child.py``'s.

Not covered here: the checks (``test_provisioning_tearing.py`` reopens the card in the parent).
"""

from __future__ import annotations

import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from iotid.host.protocol import SmartCardProtocol
from iotid.host.provisioning import ProvisioningSession, rekey_tbs
from iotid.se import Card
from iotid.se.applets.provisioning import ProvisioningApplet
from iotid.spec.algorithms import KeyAlg
from iotid.transport.loopback import LoopbackConnection

# tests/ on the path for the shared harness (this file runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.tearing import ChildArgs, report, tearing

UID = bytes.fromhex("A1A2A3A4A5A6A7A8A9AA")
MASTER = bytes(range(0x80, 0xA0))
ALG = KeyAlg.EC_P256
#: The operator's re-key authority (test key; in the field it never is on the device).
OPERATOR = ec.derive_private_key(0xC0FFEE, ec.SECP256R1())
APPLETS = [ProvisioningApplet]


def operator_signature(session: ProvisioningSession) -> bytes:
    """Ask the card for a challenge and sign it as the operator would."""
    nonce = session.rekey_challenge()
    state = session.state()
    return OPERATOR.sign(
        rekey_tbs(state.uid, state.rekey_counter, nonce), ec.ECDSA(hashes.SHA256())
    )


def main(argv: list[str]) -> int:
    args = ChildArgs.parse(argv)
    card = Card.open(args.state, applets=APPLETS)
    with tearing(args.kill_at) as tear:
        session = ProvisioningSession(SmartCardProtocol(LoopbackConnection(card)))
        if args.mode == "provision":
            session.provision()
        elif args.mode == "rekey":
            session.rekey(operator_signature(session))
        else:
            raise SystemExit(f"unknown mode {args.mode!r}")
    report(tear)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

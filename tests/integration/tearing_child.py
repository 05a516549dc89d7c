"""Child process for the NVM tearing tests: run a multi-write card operation and die mid-way.

Usage: ``python tearing_child.py STATE_DIR N MODE [--volatile]``

The card in ``STATE_DIR`` is opened (``Card.open``; ``--volatile`` opens it with
``durable=False``) and ``Nvm._write_point`` is replaced by a counter that sends this process
``SIGKILL`` when the count reaches ``N`` (``N`` = 0: never). Modes:

- ``rotate``: open SCP03 with the GP test keys (KVN 0x30) and PUT KEY *replacing* KVN 0x30 by
  :data:`NEW_KEYS` as KVN 0x31 (three slot deletes, three slot writes, a sequence counter reset).
- ``init-update``: open SCP03 with the GP test keys only (INITIALIZE UPDATE increments the
  pseudo-random challenge's sequence counter, GPC 2.3.1 Amd D section 6.2.2.1).
- ``loop``: print ``READY``, then forever: open SCP03 with whichever of the two key sets the
  card holds and replace it by the other one, printing ``ROTATED <n>`` after each PUT KEY.

When the operation finishes it prints ``POINTS <count>``, one ``POINT <i> <label>`` line per write
point (1-based, in order), and ``DONE``.

Not covered here: the checks (``test_nvm_tearing.py`` reopens the card in the parent process).
"""

from __future__ import annotations

import sys
from pathlib import Path

from iotid.apdu import ApduError
from iotid.host.errors import AuthenticationError
from iotid.host.securitydomain import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.spec import gp
from iotid.transport.loopback import LoopbackConnection

# tests/ on the path for the shared harness (this file runs as a script).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.tearing import ChildArgs, report, tearing

OLD_KVN = gp.TEST_KEY_VERSION  # 0x30
NEW_KVN = 0x31
#: The key set that replaces the GP test keys (distinct ENC, MAC and DEK).
NEW_KEYS = StaticKeys(
    bytes(range(0x50, 0x60)),
    bytes(range(0x60, 0x70)),
    bytes(range(0x70, 0x80)),
)
KEY_SETS: dict[int, StaticKeys] = {OLD_KVN: StaticKeys.gp_test_keys(), NEW_KVN: NEW_KEYS}


def _current_kvn(sd: SecurityDomainSession) -> int:
    """Authenticate with whichever known key set the card accepts; return its KVN."""
    for kvn, keys in KEY_SETS.items():
        try:
            sd.authenticate(keys, kvn=kvn)
        except (ApduError, AuthenticationError):
            continue
        return kvn
    raise SystemExit("the card accepts neither key set")


def _loop(sd: SecurityDomainSession) -> None:
    print("READY", flush=True)
    n = 0
    while True:
        current = _current_kvn(sd)
        other = NEW_KVN if current == OLD_KVN else OLD_KVN
        sd.put_key(other, KEY_SETS[other], replace_kvn=current)
        n += 1
        print(f"ROTATED {n}", flush=True)


def main(argv: list[str]) -> int:
    args = ChildArgs.parse(argv)
    card = Card.open(args.state, durable=args.durable)
    with tearing(args.kill_at) as tear:
        sd = SecurityDomainSession(LoopbackConnection(card))
        if args.mode == "loop":
            _loop(sd)
        sd.authenticate(KEY_SETS[OLD_KVN], kvn=OLD_KVN)
        if args.mode == "rotate":
            sd.put_key(NEW_KVN, NEW_KEYS, replace_kvn=OLD_KVN)
        elif args.mode != "init-update":
            raise SystemExit(f"unknown mode {args.mode!r}")
    report(tear)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

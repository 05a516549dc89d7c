"""``iotid demo``: the end-to-end walk through what iotid has built so far.

Scope today (the secure element core): a fresh emulated card with the GP test keys, SCP03
sessions at every security level through the host shim, the test keys replaced by a fresh key set
(PUT KEY), the card SECURED so the test keys are refused, a restart from NVM, and a throughput
measurement. The identity applets, the factory and the fleet platform are not built yet; the
report says so. Secret keys are never printed, only their check values.
Not in scope: printing (the CLI renders the report), argument parsing.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from iotid.apdu import ApduError
from iotid.host import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.spec.gp import TEST_KEY_VERSION, VALID_SECURITY_LEVELS, CardLifeCycle
from iotid.transport.loopback import LoopbackConnection

NOT_YET_BUILT = (
    "identity applets (provisioning, attestation, mTLS, firmware, rotation)",
    "factory (ceremony, CA hierarchy, personalisation line)",
    "fleet platform (enrollment, gateway, revocation, audit)",
)


#: Steps ``run_demo`` reports (for progress bars).
TOTAL_STEPS = 17


@dataclass
class Step:
    name: str
    ok: bool
    detail: str


@dataclass
class DemoReport:
    uid: str = ""
    steps: list[Step] = field(default_factory=list)
    apdus_per_second: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)


def run_demo(state_dir: Path, on_step: Callable[[Step], None] = lambda s: None) -> DemoReport:
    """Run every step; a failing step is recorded, later steps still report."""
    report = DemoReport()

    def record(name: str, ok: bool, detail: str) -> None:
        step = Step(name, ok, detail)
        report.steps.append(step)
        on_step(step)

    card = Card.create(state_dir / "card")
    report.uid = card.uid.hex().upper()
    record("create card", True, f"UID {report.uid}, GP test keys at KVN 0x30, life cycle OP_READY")

    sd = SecurityDomainSession(LoopbackConnection(card))
    cplc_uid = sd.get_cplc().uid.hex().upper()
    record("read CPLC", cplc_uid == report.uid, f"CPLC carries UID {cplc_uid}")

    for level in sorted(VALID_SECURITY_LEVELS - {0x00}):
        for extended in (False, True):
            s = SecurityDomainSession(LoopbackConnection(card), extended=extended)
            info = s.authenticate(StaticKeys.gp_test_keys(), level=level)
            keys = s.get_key_information()
            mode = "extended" if extended else "short"
            record(
                f"SCP03 level 0x{level:02X} ({mode})",
                len(keys) == 3,
                f"sequence counter {info.sequence_counter}, {len(keys)} keys listed",
            )

    new_keys = StaticKeys(secrets.token_bytes(16), secrets.token_bytes(16), secrets.token_bytes(16))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.put_key(0x31, new_keys, replace_kvn=TEST_KEY_VERSION)
    kcvs = " ".join(k.hex().upper() for k in new_keys.kcvs())
    record("replace test keys (PUT KEY)", True, f"KVN 0x30 -> 0x31, KCVs {kcvs}")

    sd.authenticate(new_keys, kvn=0x31)
    sd.set_card_life_cycle(CardLifeCycle.INITIALIZED)
    sd.set_card_life_cycle(CardLifeCycle.SECURED)
    record(
        "card SECURED",
        card.card_life_cycle == CardLifeCycle.SECURED,
        "SET STATUS OP_READY -> INITIALIZED -> SECURED",
    )

    try:
        SecurityDomainSession(LoopbackConnection(card)).authenticate(
            StaticKeys.gp_test_keys(), kvn=0x30
        )
        record("test keys refused", False, "the GP test keys still opened a session")
    except ApduError as exc:
        record("test keys refused", True, f"INITIALIZE UPDATE KVN 0x30 -> {exc}")

    reopened = Card.open(state_dir / "card")
    sd2 = SecurityDomainSession(LoopbackConnection(reopened))
    sd2.authenticate(new_keys, kvn=0x31, level=0x33)
    record(
        "restart from NVM",
        reopened.card_life_cycle == CardLifeCycle.SECURED,
        "state reloaded, new keys open level 0x33",
    )

    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.5:
        sd2.get_data(0x9F7F)
        count += 1
    report.apdus_per_second = count / (time.perf_counter() - start)
    record(
        "throughput",
        True,
        f"{report.apdus_per_second:,.0f} wrapped APDUs/s at level 0x33 (host + card)",
    )
    return report

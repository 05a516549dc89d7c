"""The firmware anti-rollback floor survives ``kill -9`` at every NVM write point of CONFIRM (and
the last verdict at every write point of FINISH): after a restart the floor is the old value or
the new one, never torn, and the card behaves accordingly (DESIGN.md sections 5 and 6.4).

Scope: a child process (``firmware_tearing_child.py``) runs CONFIRM or FINISH on a durable (and a
volatile) file-backed card and SIGKILLs itself at write point N, for every N. This process then
reopens the card and checks: the NVM image loads, the shared floor record is exactly 4 bytes and
equals GET STATE's floor, it is the old floor before the commit point and the new one from it on,
the last verdict is intact, CONFIRM afterwards succeeds exactly when the floor is still old, and
an image below the floor is refused.

Not covered: the NVM's own tearing semantics (``test_nvm_tearing.py``), CONFIRM's refusals
(``tests/unit/se/test_firmware_applet.py``).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from firmware_tearing_child import (
    ISSUER,
    NEXT_COUNTER,
    OLD_FLOOR,
    VALID_COUNTER,
    VERSION,
    raw_image,
)

from iotid.host import SecurityDomainSession, SmartCardProtocol
from iotid.host.firmware import ConfirmRefusedError, FirmwareSession, Verdict, perso_dgis
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.firmware import FirmwareApplet
from iotid.spec import firmware as spec
from iotid.spec.firmware import Reason
from iotid.spec.identity import SHARED_FIRMWARE_FLOOR_RECORD
from iotid.transport.loopback import LoopbackConnection
from support.tearing import TMP_NAME, check_child, commit_points, run_child, write_points

pytestmark = pytest.mark.slow

CHILD = Path(__file__).resolve().with_name("firmware_tearing_child.py")
UID = bytes.fromhex("F1F2F3F4F5F6F7F8F9FA")


def _session(card: Card) -> FirmwareSession:
    return FirmwareSession(SmartCardProtocol(LoopbackConnection(card)))


def _verify_raw(session: FirmwareSession, counter: int) -> Verdict:
    data, sig = raw_image(counter)
    return session.verify_image(
        io.BytesIO(data), signature=sig, version=VERSION, security_counter=counter
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A durable personalised card: floor 3, last verdict VALID with security counter 7."""
    state = tmp_path_factory.mktemp("firmware-pristine") / "card"
    card = Card.create(state, uid=UID, applets=[FirmwareApplet])
    with LoopbackConnection(card) as conn:
        sd = SecurityDomainSession(conn)
        sd.authenticate(StaticKeys.gp_test_keys())
        sd.install_for_personalization(spec.AID)
        sd.store_data(perso_dgis([ISSUER.public_key()], OLD_FLOOR))
    verdict = _verify_raw(_session(card), VALID_COUNTER)
    assert verdict.valid, verdict
    return state


def _write_points(state: Path, mode: str, *, durable: bool) -> tuple[list[str], str]:
    labels, (result,) = write_points(run_child(CHILD, state, 0, mode, durable=durable), results=1)
    return labels, result


def _reopen(state: Path, *, durable: bool) -> tuple[int, Verdict]:
    """Reopen the card; the floor record is whole and agrees with GET STATE."""
    card = Card.open(state, durable=durable, applets=[FirmwareApplet])
    assert not (state / TMP_NAME).exists()
    record = card.nvm.get(SHARED_FIRMWARE_FLOOR_RECORD)
    assert record is not None and len(record) == 4
    st = _session(card).state()
    assert st.floor == int.from_bytes(record, "big")
    assert st.last_verdict is not None and st.session is None
    return st.floor, st.last_verdict


@pytest.mark.parametrize("durable", [True, False])
def test_kill_at_every_write_point_of_confirm(
    pristine: Path, tmp_path: Path, durable: bool
) -> None:
    labels, result = _write_points(
        shutil.copytree(pristine, tmp_path / "count"), "confirm", durable=durable
    )
    assert result == f"FLOOR {VALID_COUNTER}"
    assert f"put {SHARED_FIRMWARE_FLOOR_RECORD}" in labels
    commit = max(commit_points(labels))
    torn = 0
    for kill_at in range(1, len(labels) + 2):
        label = labels[kill_at - 1] if kill_at <= len(labels) else "never"
        where = f"killed at point {kill_at} ({label})"
        state = shutil.copytree(pristine, tmp_path / f"n{kill_at}")
        proc = run_child(CHILD, state, kill_at, "confirm", durable=durable)
        check_child(proc, kill_at, len(labels))
        torn += (state / TMP_NAME).exists()
        floor, last = _reopen(state, durable=durable)
        assert floor == (VALID_COUNTER if kill_at >= commit else OLD_FLOOR), where
        assert last.valid and last.security_counter == VALID_COUNTER, where

        session = _session(Card.open(state, durable=durable, applets=[FirmwareApplet]))
        if floor == OLD_FLOOR:
            assert _verify_raw(session, 5).valid, where  # 5 >= 3 ...
            assert _verify_raw(session, VALID_COUNTER).valid, where
            assert session.confirm() == VALID_COUNTER, where  # ... the confirm can be redone
        else:
            with pytest.raises(ConfirmRefusedError):
                session.confirm()
        assert _verify_raw(session, 5).code is Reason.ROLLBACK, where  # 5 < 7 now
        assert session.state().floor == VALID_COUNTER, where
    assert torn > 0, "no kill left a half-written temporary image: the test tore nothing"


def test_kill_at_every_write_point_of_finish(pristine: Path, tmp_path: Path) -> None:
    labels, result = _write_points(
        shutil.copytree(pristine, tmp_path / "count"), "finish", durable=True
    )
    assert result == "VERDICT ok"
    commit = max(commit_points(labels))
    assert commit == len(labels), (
        "BEGIN and UPDATE must not write NVM: FINISH's commit is the only one"
    )
    for kill_at in range(1, len(labels) + 2):
        where = f"killed at point {kill_at}"
        state = shutil.copytree(pristine, tmp_path / f"n{kill_at}")
        check_child(run_child(CHILD, state, kill_at, "finish", durable=True), kill_at, len(labels))
        floor, last = _reopen(state, durable=True)
        assert floor == OLD_FLOOR, where
        expected = NEXT_COUNTER if kill_at >= commit else VALID_COUNTER
        assert last.valid and last.security_counter == expected, where
        session = _session(Card.open(state, applets=[FirmwareApplet]))
        assert session.confirm() == expected, where

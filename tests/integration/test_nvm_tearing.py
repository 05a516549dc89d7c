"""The card survives ``kill -9`` at every NVM write point (DESIGN.md section 5, "NVM").

Scope: a child process (``tearing_child.py``) runs a card operation over the loopback transport
and is killed with SIGKILL, either by itself at write point N (every N in turn) or by this
process at a random instant. This process then reopens the state directory and checks that
the card is consistent: it answers SELECT, exactly one of the two key sets (the GP test keys,
KVN 0x30, or their replacement, KVN 0x31) opens an SCP03 session and the key information lists
only that set's three keys, the sequence counter is the old or the new value, and later
operations after another restart work.

Not covered: operating-system crashes (fsync; the ``durable`` flag is only exercised for its
kill -9 behaviour here), the NVM's own unit semantics (``tests/unit/se/test_nvm.py``).
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from tearing_child import KEY_SETS, NEW_KVN, OLD_KVN

from iotid.apdu import ApduError, CommandApdu
from iotid.host.errors import AuthenticationError
from iotid.host.securitydomain import SecurityDomainSession
from iotid.se import Card
from iotid.spec import gp
from iotid.spec.iso7816 import SELECT_BY_DF_NAME, Ins
from iotid.transport.loopback import LoopbackConnection
from support.tearing import KILLED, TMP_NAME, check_child, commit_points, run_child, write_points

pytestmark = pytest.mark.slow

CHILD = Path(__file__).resolve().with_name("tearing_child.py")
UID = bytes(10)
#: INITIALIZE UPDATEs run on the pristine card, so its KVN 0x30 sequence counter is not zero.
PRISTINE_SEQUENCE = 3
SELECT_ISD = CommandApdu(0x00, Ins.SELECT, SELECT_BY_DF_NAME, 0x00, gp.ISD_AID, 256).encode()


@dataclass(frozen=True)
class CardState:
    """What the parent found after the child died."""

    kvn: int  # the one key set that opens a session
    sequence: int  # its sequence counter as stored (before the parent's own INITIALIZE UPDATE)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A durable card with the GP test keys and a KVN 0x30 sequence counter of 3."""
    state = tmp_path_factory.mktemp("pristine") / "card"
    card = Card.create(state, uid=UID)
    with LoopbackConnection(card) as conn:
        sd = SecurityDomainSession(conn)
        for _ in range(PRISTINE_SEQUENCE):
            sd.authenticate(KEY_SETS[OLD_KVN], kvn=OLD_KVN)
    return state


def _copy(pristine: Path, dest: Path) -> Path:
    shutil.copytree(pristine, dest)
    return dest


def _write_points(state: Path, mode: str, *, durable: bool) -> list[str]:
    """Run ``mode`` to completion (never killed) and return the labels of its write points."""
    return write_points(run_child(CHILD, state, 0, mode, durable=durable))[0]


def _commit_point(labels: list[str]) -> int:
    """1-based number of the write point after which the last commit is visible (the rename)."""
    return max(commit_points(labels))


def _check_consistent(state: Path, *, durable: bool) -> CardState:
    """Reopen the card twice and check the invariant; return the surviving key set."""
    card = Card.open(state, durable=durable)
    assert not (state / TMP_NAME).exists(), "the torn temporary image must be removed on open"
    opened: dict[int, int] = {}
    with LoopbackConnection(card) as conn:
        assert conn.transmit(SELECT_ISD)[-2:] == b"\x90\x00"
        for kvn, keys in KEY_SETS.items():
            sd = SecurityDomainSession(conn)  # SELECT: ends any earlier session
            try:
                info = sd.authenticate(keys, kvn=kvn)
            except (ApduError, AuthenticationError):
                continue
            assert info.kvn == kvn
            assert info.sequence_counter is not None
            # Key information: exactly this set's ENC, MAC and DEK (AES-128), nothing else.
            expected = {(kid, kvn): (gp.KeyType.AES, 16) for kid in (1, 2, 3)}
            assert sd.get_key_information() == expected
            opened[kvn] = info.sequence_counter - 1
    assert len(opened) == 1, f"key sets that open a session: {sorted(opened)}"
    ((kvn, sequence),) = opened.items()

    # A second restart: the parent's own INITIALIZE UPDATE persisted, the card still works.
    with LoopbackConnection(Card.open(state, durable=durable)) as conn:
        sd = SecurityDomainSession(conn)
        info = sd.authenticate(KEY_SETS[kvn], kvn=kvn)
        assert info.sequence_counter == sequence + 2
        assert sd.get_cplc().uid == UID
    return CardState(kvn, sequence)


def test_kill_at_every_write_point_of_a_key_set_replacement(pristine: Path, tmp_path: Path) -> None:
    """Durable NVM; PUT KEY replacing KVN 0x30 by 0x31 killed at each write point in turn."""
    scratch = _copy(pristine, tmp_path / "count")
    labels = _write_points(scratch, "rotate", durable=True)
    # INITIALIZE UPDATE's commit, then PUT KEY: 4 deletes, 4 puts and its own commit.
    assert len(labels) >= 2 + 8 + 2
    assert _check_consistent(scratch, durable=True) == CardState(NEW_KVN, 0)
    commit = _commit_point(labels)
    torn_images = 0
    for kill_at in range(1, len(labels) + 2):
        label = labels[kill_at - 1] if kill_at <= len(labels) else "never"
        where = f"killed at point {kill_at} ({label})"
        state = _copy(pristine, tmp_path / f"n{kill_at}")
        proc = run_child(CHILD, state, kill_at, "rotate", durable=True)
        check_child(proc, kill_at, len(labels))
        torn_images += (state / TMP_NAME).exists()
        found = _check_consistent(state, durable=True)
        if kill_at >= commit:
            # The new set, with its sequence counter reset (GPC 2.3.1 Amd D section 6.2.2.1).
            assert found == CardState(NEW_KVN, 0), where
        else:
            assert found.kvn == OLD_KVN, where
            assert found.sequence in (PRISTINE_SEQUENCE, PRISTINE_SEQUENCE + 1), where
    assert torn_images > 0, "no kill left a half-written temporary image: the test tore nothing"


def test_kill_during_initialize_update_tears_the_counter(pristine: Path, tmp_path: Path) -> None:
    """INITIALIZE UPDATE increments the KVN 0x30 sequence counter: old or old+1, never other."""
    labels = _write_points(_copy(pristine, tmp_path / "count"), "init-update", durable=False)
    assert labels, "INITIALIZE UPDATE with a pseudo-random challenge must write the counter"
    commit = _commit_point(labels)
    for kill_at in range(1, len(labels) + 1):
        state = _copy(pristine, tmp_path / f"n{kill_at}")
        proc = run_child(CHILD, state, kill_at, "init-update", durable=False)
        check_child(proc, kill_at, len(labels))
        found = _check_consistent(state, durable=False)
        expected = PRISTINE_SEQUENCE + 1 if kill_at >= commit else PRISTINE_SEQUENCE
        where = f"killed at point {kill_at} ({labels[kill_at - 1]})"
        assert found == CardState(OLD_KVN, expected), where


def test_random_sigkill_during_key_rotation_loop(pristine: Path, tmp_path: Path) -> None:
    """The parent kills a child that rotates the key set forever, 20 times at random instants."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    state = _copy(pristine, tmp_path / "card")
    args = [sys.executable, str(CHILD), str(state), "0", "loop", "--volatile"]
    pipe = subprocess.PIPE
    rotations = 0
    for run in range(20):
        delay = rng.uniform(0.020, 0.200)
        with subprocess.Popen(args, stdout=pipe, stderr=pipe, text=True) as proc:
            assert proc.stdout is not None
            ready = proc.stdout.readline()  # the card is open; the loop starts now
            if ready == "READY\n":
                time.sleep(delay)
            proc.kill()
            out, err = proc.communicate(timeout=60)
        context = f"seed {seed}, run {run}, killed after {delay * 1000:.0f} ms"
        assert ready == "READY\n", f"{context}: {err}"
        assert proc.returncode == KILLED, f"{context}: the child ended by itself\n{err}"
        rotations += out.count("ROTATED")
        _check_consistent(state, durable=False)
    assert rotations > 0, "the child never completed a PUT KEY: the kills tore nothing"

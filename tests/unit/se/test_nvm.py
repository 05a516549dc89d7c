"""Unit tests of the emulator's transactional NVM (``iotid.se.nvm``).

Scope: transaction semantics (reads see pending writes, rollback, commit, reopen, refusals),
the commit sequence number, a commit with nothing changed, a commit that fails half-way, image
integrity on open (flipped bytes, truncation), the leftover temporary image of a torn commit,
the in-memory store and ``durable=False``.
Not covered: process death at each write point (``tests/integration/test_nvm_tearing.py``),
what the card stores in the records.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest

from iotid.se.nvm import IMAGE_NAME, Nvm, NvmError

Factory = Callable[[Path], Nvm]

FACTORIES: dict[str, Factory] = {
    "durable": lambda d: Nvm.create(d / "card"),
    "volatile-disk": lambda d: Nvm.create(d / "card", durable=False),
    "in-memory": lambda _d: Nvm.in_memory(),
}


@pytest.fixture(params=sorted(FACTORIES))
def nvm(request: pytest.FixtureRequest, tmp_path: Path) -> Nvm:
    """The same tests for the durable file store, the non-durable one and the in-memory one."""
    factory: Factory = FACTORIES[request.param]
    return factory(tmp_path)


def _committed_store(state: Path, *, durable: bool = True) -> Nvm:
    nvm = Nvm.create(state, durable=durable)
    with nvm.transaction():
        nvm.put("a", b"1")
        nvm.put("b/x", b"22")
        nvm.put("b/y", b"")
    return nvm


# -- transaction semantics (every store) ---------------------------------------------------------
def test_get_sees_pending_writes_and_deletes(nvm: Nvm) -> None:
    with nvm.transaction():
        nvm.put("k", b"v")
    nvm.begin()
    nvm.put("n", b"new")
    nvm.delete("k")
    assert nvm.get("n") == b"new"
    assert nvm.get("k") is None
    assert nvm.keys() == ["n"]
    nvm.put("k", b"again")
    assert nvm.get("k") == b"again"
    assert nvm.keys() == ["k", "n"]
    nvm.commit()


def test_rollback_forgets_pending_writes(nvm: Nvm) -> None:
    with nvm.transaction():
        nvm.put("k", b"v")
    sequence, commits = nvm.sequence, nvm.commits
    nvm.begin()
    nvm.put("k", b"changed")
    nvm.put("other", b"x")
    nvm.rollback()
    assert not nvm.in_transaction
    assert nvm.get("k") == b"v"
    assert nvm.get("other") is None
    assert (nvm.sequence, nvm.commits) == (sequence, commits)


def test_transaction_context_rolls_back_on_exception(nvm: Nvm) -> None:
    with pytest.raises(RuntimeError), nvm.transaction():
        nvm.put("k", b"v")
        raise RuntimeError("applet failed")
    assert not nvm.in_transaction
    assert nvm.get("k") is None


def test_commit_applies_writes_and_counts(nvm: Nvm) -> None:
    sequence = nvm.sequence
    with nvm.transaction():
        nvm.put("a", b"1")
        nvm.put("b", b"2")
    assert nvm.sequence == sequence + 1
    with nvm.transaction():
        nvm.delete("a")
    assert nvm.sequence == sequence + 2
    assert (nvm.get("a"), nvm.get("b")) == (None, b"2")


def test_write_outside_a_transaction_is_refused(nvm: Nvm) -> None:
    with pytest.raises(NvmError):
        nvm.put("k", b"v")
    with pytest.raises(NvmError):
        nvm.delete("k")
    with pytest.raises(NvmError):
        nvm.commit()
    assert nvm.get("k") is None


def test_nested_begin_is_refused(nvm: Nvm) -> None:
    nvm.begin()
    nvm.put("k", b"v")
    with pytest.raises(NvmError):
        nvm.begin()
    assert nvm.get("k") == b"v"  # the open transaction is untouched
    nvm.commit()
    assert nvm.get("k") == b"v"


def test_commit_without_change_writes_nothing(nvm: Nvm) -> None:
    with nvm.transaction():
        nvm.put("k", b"v")
    sequence, commits = nvm.sequence, nvm.commits
    with nvm.transaction():
        pass
    with nvm.transaction():
        nvm.put("k", b"v")  # the value it already has
        nvm.delete("absent")
    with nvm.transaction():
        nvm.put("k", b"w")
        nvm.put("k", b"v")  # changed back before the commit
    assert (nvm.sequence, nvm.commits) == (sequence, commits)


def test_stored_values_are_copies(nvm: Nvm) -> None:
    value = bytearray(b"abc")
    with nvm.transaction():
        nvm.put("k", bytes(value))
        value[0] = 0x7A
    assert nvm.get("k") == b"abc"


# -- persistence ---------------------------------------------------------------------------------
@pytest.mark.parametrize("durable", [True, False])
def test_commit_persists_and_reopen_sees_it(tmp_path: Path, durable: bool) -> None:
    state = tmp_path / "card"
    nvm = _committed_store(state, durable=durable)
    with nvm.transaction():
        nvm.delete("a")
        nvm.put("c", b"\x00" * 300)
    nvm.begin()
    nvm.put("uncommitted", b"lost")  # the process "dies" with this transaction open
    again = Nvm.open(state, durable=durable)
    assert again.keys() == ["b/x", "b/y", "c"]
    assert again.keys("b/") == ["b/x", "b/y"]
    assert (again.get("b/x"), again.get("b/y"), again.get("c")) == (b"22", b"", b"\x00" * 300)
    assert again.get("uncommitted") is None
    assert again.sequence == nvm.sequence == 2  # the empty image is 0, then two commits


def test_no_change_commit_leaves_the_image_untouched(tmp_path: Path) -> None:
    state = tmp_path / "card"
    nvm = _committed_store(state)
    before = (state / IMAGE_NAME).read_bytes()
    with nvm.transaction():
        nvm.put("a", b"1")
    assert (state / IMAGE_NAME).read_bytes() == before
    assert Nvm.open(state).sequence == nvm.sequence


def test_failed_commit_keeps_the_old_state(tmp_path: Path) -> None:
    """A write error during the image write leaves memory and disk at the previous commit."""
    state = tmp_path / "card"
    nvm = _committed_store(state)
    sequence = nvm.sequence

    def fail_before_rename(_self: Nvm, label: str) -> None:
        if label == "before rename":
            raise OSError("disk full")

    nvm.begin()
    nvm.put("a", b"changed")
    with mock.patch.object(Nvm, "_write_point", fail_before_rename), pytest.raises(OSError):
        nvm.commit()
    assert not nvm.in_transaction
    assert (nvm.get("a"), nvm.sequence) == (b"1", sequence)
    again = Nvm.open(state)
    assert (again.get("a"), again.sequence) == (b"1", sequence)


def test_create_refuses_an_existing_card(tmp_path: Path) -> None:
    _committed_store(tmp_path / "card")
    with pytest.raises(NvmError):
        Nvm.create(tmp_path / "card")
    assert Nvm.open(tmp_path / "card").get("a") == b"1"


def test_open_without_an_image_fails(tmp_path: Path) -> None:
    with pytest.raises(NvmError):
        Nvm.open(tmp_path)


# -- integrity -----------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["magic", "sequence", "record", "digest"])
def test_flipped_byte_is_detected_on_open(tmp_path: Path, where: str) -> None:
    state = tmp_path / "card"
    _committed_store(state)
    image = state / IMAGE_NAME
    blob = bytearray(image.read_bytes())
    offsets = {"magic": 0, "sequence": 16, "record": blob.index(b"b/x"), "digest": len(blob) - 1}
    offset = offsets[where]
    blob[offset] ^= 0x01
    image.write_bytes(bytes(blob))
    with pytest.raises(NvmError):
        Nvm.open(state)


@pytest.mark.parametrize("keep", [0, 10, -1])
def test_truncated_image_is_detected_on_open(tmp_path: Path, keep: int) -> None:
    state = tmp_path / "card"
    _committed_store(state)
    image = state / IMAGE_NAME
    image.write_bytes(image.read_bytes()[:keep])
    with pytest.raises(NvmError):
        Nvm.open(state)


def test_leftover_temporary_image_is_removed_and_the_old_one_loads(tmp_path: Path) -> None:
    """A commit torn before its rename leaves ``nvm.tmp``; open discards it."""
    state = tmp_path / "card"
    nvm = _committed_store(state)
    tmp = (state / IMAGE_NAME).with_suffix(".tmp")
    tmp.write_bytes((state / IMAGE_NAME).read_bytes()[:20])  # half of a newer image
    again = Nvm.open(state)
    assert not tmp.exists()
    assert (again.get("a"), again.sequence) == (b"1", nvm.sequence)
    with again.transaction():  # and the card goes on committing
        again.put("a", b"2")
    assert Nvm.open(state).get("a") == b"2"


def test_in_memory_store_writes_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    nvm = Nvm.in_memory()
    with nvm.transaction():
        nvm.put("k", b"v")
    assert (nvm.get("k"), nvm.sequence, nvm.commits) == (b"v", 1, 1)
    assert list(tmp_path.iterdir()) == []

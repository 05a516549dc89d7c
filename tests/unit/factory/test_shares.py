"""SLIP-39 custody of the master secret: iotid.factory.shares over shamir-mnemonic."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest
import shamir_mnemonic.shamir
from shamir_mnemonic.wordlist import WORDLIST

from iotid.factory.keystore import QuorumError
from iotid.factory.shares import (
    ShareSet,
    combine,
    read_share_file,
    share_info,
    split,
    write_share_file,
)

SECRET = bytes(range(32))


def _bigrams(mnemonic: str) -> list[str]:
    words = mnemonic.split()
    return [f"{a} {b}" for a, b in itertools.pairwise(words)]


def _assert_no_share_text(message: str, *mnemonics: str) -> None:
    for mnemonic in mnemonics:
        for bigram in _bigrams(mnemonic):
            assert bigram not in message


def _other_valid_word(word: str) -> str:
    return WORDLIST[(WORDLIST.index(word) + 1) % len(WORDLIST)]


@pytest.fixture(scope="module")
def two_of_three() -> ShareSet:
    return split(SECRET, 2, 3)


@pytest.fixture(scope="module")
def three_of_five() -> ShareSet:
    return split(SECRET, 3, 5)


def test_split_describes_its_shares(three_of_five: ShareSet) -> None:
    assert (three_of_five.threshold, three_of_five.count) == (3, 5)
    assert len(three_of_five.mnemonics) == 5
    assert len(set(three_of_five.mnemonics)) == 5
    for index, mnemonic in enumerate(three_of_five.mnemonics, start=1):
        info = share_info(mnemonic)
        assert info.identifier == three_of_five.identifier
        assert (info.index, info.threshold) == (index, 3)


@pytest.mark.parametrize(("m", "n"), [(2, 3), (3, 5)])
def test_every_quorum_of_m_recovers_the_secret(m: int, n: int) -> None:
    share_set = split(SECRET, m, n)
    for subset in itertools.combinations(share_set.mnemonics, m):
        for ordering in (subset, subset[::-1]):
            assert combine(ordering, expected_identifier=share_set.identifier) == SECRET


@pytest.mark.parametrize(("m", "n"), [(2, 3), (3, 5)])
def test_every_set_of_m_minus_one_is_refused(m: int, n: int) -> None:
    share_set = split(SECRET, m, n)
    for subset in itertools.combinations(share_set.mnemonics, m - 1):
        with pytest.raises(QuorumError, match=rf"^{m} of {n} shares needed, {m - 1} given$"):
            combine(subset, expected_identifier=share_set.identifier, count=n)


def test_too_few_without_the_count_still_says_how_many(three_of_five: ShareSet) -> None:
    with pytest.raises(QuorumError, match=r"^3 shares needed, 2 given$"):
        combine(three_of_five.mnemonics[:2], expected_identifier=None)


def test_more_than_m_shares_also_recover(two_of_three: ShareSet) -> None:
    assert combine(two_of_three.mnemonics, expected_identifier=two_of_three.identifier) == SECRET


def test_a_16_byte_secret_round_trips() -> None:
    share_set = split(b"\x42" * 16, 2, 2)
    assert combine(share_set.mnemonics, expected_identifier=None) == b"\x42" * 16


@pytest.mark.parametrize(
    ("secret", "m", "n", "message"),
    [
        (b"x" * 24, 2, 3, "16 or 32 bytes"),
        (SECRET, 0, 3, "quorum must be between"),
        (SECRET, 4, 3, "quorum must be between"),
        (SECRET, 1, 3, "1-of-N"),
        (SECRET, 2, 17, "between 1 and 16"),
    ],
)
def test_split_refuses_what_slip39_cannot_do(secret: bytes, m: int, n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split(secret, m, n)


def test_no_shares(two_of_three: ShareSet) -> None:
    with pytest.raises(QuorumError, match="no shares given"):
        combine([], expected_identifier=two_of_three.identifier)


def test_a_malformed_word_is_named_by_position_only(two_of_three: ShareSet) -> None:
    words = two_of_three.mnemonics[1].split()
    words[5] = "notaslip39word"
    bad = " ".join(words)
    with pytest.raises(QuorumError, match=r"^share 2 is not a valid SLIP-39 mnemonic$") as err:
        combine([two_of_three.mnemonics[0], bad], expected_identifier=two_of_three.identifier)
    _assert_no_share_text(str(err.value), *two_of_three.mnemonics)
    assert err.value.__cause__ is None
    assert err.value.__context__ is None


@pytest.mark.parametrize("position", [0, 4, 10, -1])
def test_a_flipped_word_fails_the_checksum(two_of_three: ShareSet, position: int) -> None:
    words = two_of_three.mnemonics[0].split()
    words[position] = _other_valid_word(words[position])
    with pytest.raises(QuorumError, match=r"^share 1 is not a valid SLIP-39 mnemonic$") as err:
        combine([" ".join(words), two_of_three.mnemonics[1]], expected_identifier=None)
    _assert_no_share_text(str(err.value), *two_of_three.mnemonics)


def test_a_truncated_share_is_not_valid(two_of_three: ShareSet) -> None:
    truncated = " ".join(two_of_three.mnemonics[2].split()[:-1])
    with pytest.raises(QuorumError, match="share 2 is not a valid"):
        combine([two_of_three.mnemonics[0], truncated], expected_identifier=None)


def test_a_share_of_another_ceremony_is_named(two_of_three: ShareSet) -> None:
    other = split(SECRET, 2, 3)
    assert other.identifier != two_of_three.identifier  # 1 in 32768 chance of a false alarm
    mixed = [two_of_three.mnemonics[0], other.mnemonics[1]]
    with pytest.raises(QuorumError, match="share 2 belongs to another ceremony") as err:
        combine(mixed, expected_identifier=two_of_three.identifier)
    _assert_no_share_text(str(err.value), *two_of_three.mnemonics, *other.mnemonics)
    with pytest.raises(QuorumError, match="shares 1 and 2 come from different ceremonies"):
        combine(mixed, expected_identifier=None)
    with pytest.raises(QuorumError, match="share 1 belongs to another ceremony"):
        combine(other.mnemonics[:2], expected_identifier=two_of_three.identifier)


def test_another_split_under_the_same_identifier_fails_the_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shamir_mnemonic.shamir, "_random_identifier", lambda: 0x1234)
    first, second = split(SECRET, 2, 3), split(bytes(32), 2, 3)
    assert first.identifier == second.identifier == 0x1234
    with pytest.raises(QuorumError, match="do not combine"):
        combine([first.mnemonics[0], second.mnemonics[1]], expected_identifier=0x1234)
    with pytest.raises(QuorumError, match="shares 1 and 2 claim the same index but differ"):
        combine([first.mnemonics[0], second.mnemonics[0]], expected_identifier=0x1234)


def test_a_duplicate_share_is_refused(two_of_three: ShareSet) -> None:
    share = two_of_three.mnemonics[2]
    with pytest.raises(QuorumError, match=r"^share 2 is the same share as share 1$"):
        combine([share, share], expected_identifier=two_of_three.identifier)
    spaced = "  " + share.upper().replace(" ", "   ")  # same share, typed differently
    with pytest.raises(QuorumError, match="share 3 is the same share as share 1"):
        combine(
            [share, two_of_three.mnemonics[0], spaced], expected_identifier=two_of_three.identifier
        )


def test_share_set_repr_redacts_the_words(two_of_three: ShareSet) -> None:
    for text in (repr(two_of_three), str(two_of_three), f"{two_of_three}"):
        assert "redacted" in text
        for mnemonic in two_of_three.mnemonics:
            _assert_no_share_text(text, mnemonic)
            assert mnemonic.split()[0] not in text.split()


def test_share_file_round_trip(tmp_path: Path, two_of_three: ShareSet) -> None:
    path = tmp_path / "share-2.txt"
    write_share_file(path, 2, two_of_three.mnemonics[1], "ceremony-42", custodian="Alice")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text(encoding="ascii")
    header = text.split("-----BEGIN")[0]
    assert "ceremony-42" in header
    assert "Alice" in header
    assert "share: 2" in header
    assert "NEVER store it" in header
    assert "next to another share" in header
    assert read_share_file(path) == two_of_three.mnemonics[1]


def test_share_files_recombine(tmp_path: Path, two_of_three: ShareSet) -> None:
    paths = []
    for index, mnemonic in enumerate(two_of_three.mnemonics, start=1):
        paths.append(tmp_path / f"share-{index}.txt")
        write_share_file(paths[-1], index, mnemonic, "c1")
    read = [read_share_file(p) for p in paths[1:]]
    assert combine(read, expected_identifier=two_of_three.identifier) == SECRET


def test_share_file_is_never_overwritten(tmp_path: Path, two_of_three: ShareSet) -> None:
    path = tmp_path / "share-1.txt"
    write_share_file(path, 1, two_of_three.mnemonics[0], "c1")
    with pytest.raises(FileExistsError):
        write_share_file(path, 1, two_of_three.mnemonics[0], "c1")
    assert read_share_file(path) == two_of_three.mnemonics[0]


def test_share_file_checks_its_inputs(tmp_path: Path, two_of_three: ShareSet) -> None:
    with pytest.raises(ValueError, match="is share 1, not share 2"):
        write_share_file(tmp_path / "a", 2, two_of_three.mnemonics[0], "c1")
    with pytest.raises(ValueError, match="single line"):
        write_share_file(tmp_path / "b", 1, two_of_three.mnemonics[0], "c1\nforged header")
    with pytest.raises(QuorumError, match="not a valid SLIP-39"):
        write_share_file(tmp_path / "c", 1, "abandon " * 20, "c1")
    assert not any(tmp_path.iterdir())


def test_reading_something_that_is_not_a_share_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n", encoding="ascii")
    with pytest.raises(QuorumError, match="is not an iotid share file"):
        read_share_file(path)
    with pytest.raises(QuorumError, match="cannot read share file"):
        read_share_file(tmp_path / "missing.txt")

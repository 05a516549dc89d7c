"""The hash-chained ceremony record: format, chaining, and the tampering matrix."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iotid.factory.record import FORMAT, GENESIS_PREV, Record, RecordError, canonical_json


def _canon(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _rehash(obj: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in obj.items() if k != "hash"}
    return {**body, "hash": hashlib.sha256(_canon(body)).hexdigest()}


@pytest.fixture
def record(tmp_path: Path) -> Record:
    rec = Record.create(tmp_path / "ceremony.jsonl", {"quorum": "2-of-3"}, ["operator"])
    rec.append("keystore.created", {"backend": "software"}, ["operator", "alice"])
    rec.append("root.key.generated", {"fingerprint": "ab" * 32, "note": "é"}, ["alice", "bob"])
    rec.append("root.certificate.issued", {"serial": 7}, ["alice", "bob"])
    return rec


def _lines(rec: Record) -> list[bytes]:
    return rec.path.read_bytes().splitlines(keepends=True)


def test_format_is_independently_checkable(record: Record) -> None:
    lines = _lines(record)
    assert len(lines) == 4
    prev = GENESIS_PREV
    for number, raw in enumerate(lines):
        assert raw.endswith(b"\n")
        obj = json.loads(raw)
        assert raw[:-1] == _canon(obj)  # canonical on disk, ASCII only
        assert raw.isascii()
        assert set(obj) == {"seq", "time", "actors", "action", "details", "prev", "hash"}
        assert obj["seq"] == number
        assert obj["prev"] == prev
        assert obj["time"].endswith("Z")
        assert _rehash(obj)["hash"] == obj["hash"]
        prev = obj["hash"]
    assert record.head_hash == prev
    first = json.loads(lines[0])
    assert first["action"] == "record.created"
    assert first["details"] == {"format": FORMAT, "header": {"quorum": "2-of-3"}}
    assert json.loads(lines[2])["details"]["note"] == "é"


def test_open_verifies_and_exposes_entries(record: Record) -> None:
    again = Record.open(record.path)
    assert [e.action for e in again.entries] == [
        "record.created",
        "keystore.created",
        "root.key.generated",
        "root.certificate.issued",
    ]
    assert again.head_hash == record.head_hash
    assert again.header == {"quorum": "2-of-3"}
    assert again.entries[1].actors == ("operator", "alice")
    found = again.find(again.entries[2].hash)
    assert found is not None and found.details["fingerprint"] == "ab" * 32
    assert again.find("00" * 32) is None
    assert again.verify() == list(again.entries)


def test_create_refuses_existing_file(record: Record) -> None:
    with pytest.raises(FileExistsError):
        Record.create(record.path, {})


def _edit_value(lines: list[bytes]) -> list[bytes]:
    obj = json.loads(lines[1])
    obj["details"]["backend"] = "pkcs11"
    return [lines[0], _canon(obj) + b"\n", *lines[2:]]


def _edit_and_rehash(lines: list[bytes]) -> list[bytes]:
    obj = json.loads(lines[1])
    obj["details"]["backend"] = "pkcs11"
    return [lines[0], _canon(_rehash(obj)) + b"\n", *lines[2:]]


def _swap_actor_and_rehash(lines: list[bytes]) -> list[bytes]:
    obj = json.loads(lines[1])
    obj["actors"] = ["mallory"]
    return [lines[0], _canon(_rehash(obj)) + b"\n", *lines[2:]]


def _reformat(lines: list[bytes]) -> list[bytes]:
    return [lines[0], json.dumps(json.loads(lines[1]), indent=None).encode() + b"\n", *lines[2:]]


def _non_utc_time(lines: list[bytes]) -> list[bytes]:
    obj = json.loads(lines[1])
    obj["time"] = obj["time"][:-1] + "+02:00"
    return [lines[0], _canon(_rehash(obj)) + b"\n", *lines[2:]]


def _extra_field(lines: list[bytes]) -> list[bytes]:
    obj = json.loads(lines[1])
    obj["note"] = "x"
    return [lines[0], _canon(_rehash(obj)) + b"\n", *lines[2:]]


def _fake_header(lines: list[bytes]) -> list[bytes]:
    obj = json.loads(lines[0])
    obj["details"] = {"format": "something-else/1", "header": {}}
    return [_canon(_rehash(obj)) + b"\n", *lines[1:]]


def _nan(lines: list[bytes]) -> list[bytes]:
    return [lines[0], lines[1].replace(b'"software"', b"NaN"), *lines[2:]]


MATRIX: list[tuple[str, Callable[[list[bytes]], list[bytes]], str]] = [
    ("edited value", _edit_value, r"line 2: entry hash does not match its content"),
    ("edited and re-hashed", _edit_and_rehash, r"line 3: prev does not match .*chain broken"),
    ("actor swapped", _swap_actor_and_rehash, r"line 3: .*chain broken"),
    ("line deleted", lambda ls: [ls[0], *ls[2:]], r"line 2: seq 2 where 1 was expected"),
    ("first line deleted", lambda ls: ls[1:], r"line 1: seq 1 where 0 was expected"),
    ("lines swapped", lambda ls: [ls[0], ls[2], ls[1], ls[3]], r"line 2: seq 2 where 1"),
    ("line duplicated", lambda ls: [*ls[:2], ls[1], *ls[2:]], r"line 3: seq 1 where 2"),
    ("last line truncated", lambda ls: [*ls[:3], ls[3][:40]], r"line 4: truncated"),
    ("final newline removed", lambda ls: [*ls[:3], ls[3][:-1]], r"line 4: .*no newline"),
    ("blank line inserted", lambda ls: [ls[0], b"\n", *ls[1:]], r"line 2: empty line"),
    ("garbage line", lambda ls: [ls[0], b"{oops\n", *ls[1:]], r"line 2: not a JSON object"),
    ("not an object", lambda ls: [ls[0], b"[1,2]\n", *ls[1:]], r"line 2: not a JSON object"),
    ("reformatted line", _reformat, r"line 2: not in canonical form"),
    ("non-UTC time", _non_utc_time, r"line 2: time is not"),
    ("extra field", _extra_field, r"line 2: wrong fields .*unexpected \['note'\]"),
    ("fake header", _fake_header, r"line 1: the first entry is not"),
    ("NaN smuggled in", _nan, r"line 2: not a JSON object"),
    ("emptied", lambda ls: [], r"the record is empty"),
]


@pytest.mark.parametrize(("case", "tamper", "reason"), MATRIX, ids=[m[0] for m in MATRIX])
def test_tampering_is_detected(
    record: Record, case: str, tamper: Callable[[list[bytes]], list[bytes]], reason: str
) -> None:
    record.path.write_bytes(b"".join(tamper(_lines(record))))
    with pytest.raises(RecordError, match=reason):
        Record.open(record.path)
    with pytest.raises(RecordError, match=reason):
        record.verify()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="no record at"):
        Record.open(tmp_path / "absent.jsonl")


def test_two_writers_chain_onto_each_other(record: Record) -> None:
    other = Record.open(record.path)
    a = other.append("batch.created", {"name": "b1"}, ["line"])
    b = record.append("batch.created", {"name": "b2"}, ["line"])  # has not seen ``a`` yet
    assert b.prev == a.hash and b.seq == a.seq + 1
    assert [e.hash for e in Record.open(record.path).entries][-2:] == [a.hash, b.hash]


def test_append_refuses_a_record_that_shifted_below_what_was_read(record: Record) -> None:
    # append() only re-reads from the newest entry it verified (full checks are verify()'s job),
    # but an edit below that changes the file's layout moves that entry and is refused.
    record.path.write_bytes(b"".join(_edit_value(_lines(record))))  # "software" -> "pkcs11"
    before = record.path.read_bytes()
    with pytest.raises(RecordError, match="changed below"):
        record.append("x.y", {}, ["a"])
    assert record.path.read_bytes() == before


def test_append_refuses_after_last_line_tampered(record: Record) -> None:
    lines = _lines(record)
    lines[-1] = lines[-1].replace(b'"serial":7', b'"serial":8')
    record.path.write_bytes(b"".join(lines))
    with pytest.raises(RecordError, match="changed below"):
        record.append("x.y", {}, ["a"])


def test_append_refuses_bad_tail_written_by_someone_else(record: Record) -> None:
    with record.path.open("ab") as f:
        f.write(b'{"half":')
    with pytest.raises(RecordError, match="line 5: truncated"):
        record.append("x.y", {}, ["a"])


@pytest.mark.parametrize(
    ("action", "details", "actors", "reason"),
    [
        ("x.y", {"k": object()}, ["a"], "canonical JSON"),
        ("x.y", {"k": float("nan")}, ["a"], "canonical JSON"),
        ("Bad Action", {}, ["a"], "action"),
        ("x.y", {}, "alice", "actors"),
        ("x.y", {}, [""], "actors"),
    ],
)
def test_append_rejects_bad_input_and_writes_nothing(
    record: Record, action: str, details: dict[str, Any], actors: Any, reason: str
) -> None:
    before = record.path.read_bytes()
    with pytest.raises(RecordError, match=reason):
        record.append(action, details, actors)
    assert record.path.read_bytes() == before
    assert len(Record.open(record.path).entries) == 4


def test_details_are_stored_as_read_back(record: Record) -> None:
    entry = record.append("x.y", {"indices": (1, 2), "nested": {"b": 1, "a": [True, None]}})
    assert entry.details == {"indices": [1, 2], "nested": {"a": [True, None], "b": 1}}
    assert Record.open(record.path).head == entry
    assert canonical_json({"b": 1, "a": "é"}) == b'{"a":"\\u00e9","b":1}'

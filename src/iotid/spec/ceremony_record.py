"""The ceremony record's format: entries, their hashes and the chain rule (JSON Lines).

Scope: the pure, I/O-free part of the factory's ceremony record, shared by the factory (which
writes and extends the file, ``iotid.factory.record``) and by anyone who only *reads* a copy of
it (the fleet's ``trace``). One entry per line, each line the *canonical JSON* of the entry
(``iotid.spec.canonical``), with the fields:

- ``seq``: 0, 1, 2, ... (the line number minus one);
- ``time``: UTC, ISO 8601 with microseconds and a ``Z`` (``2025-01-31T12:00:00.000000Z``);
- ``actors``: who performed the step (custodians, operator, ``iotid`` for automatic steps);
- ``action``: dotted name of the step (``keystore.created``, ``root.certificate.issued``, ...);
- ``details``: a JSON object (public facts only: never key material, never share words);
- ``prev``: the ``hash`` of the previous entry (64 zeros for entry 0);
- ``hash``: SHA-256 (hex) of the canonical JSON of the entry without its ``hash`` field.

Entry 0 is ``record.created`` with ``details = {"format": FORMAT, "header": {...}}``.
:func:`parse_record` checks a whole record's bytes and names the line and the fault:
unparsable or truncated line, non-canonical line, edited entry (hash mismatch), missing /
duplicated / reordered lines (seq), broken chain (prev).

Not in scope: files, locking and appending (``iotid.factory.record``), what the entries mean
(``iotid.factory.ceremony``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from iotid.spec.canonical import CanonicalJsonError
from iotid.spec.canonical import canonical_json as _canonical

__all__ = [
    "CPS_PREFIX",
    "CREATED",
    "FORMAT",
    "GENESIS_PREV",
    "Entry",
    "RecordError",
    "canonical_json",
    "ceremony_reference",
    "entry_digest",
    "parse_lines",
    "parse_record",
]

FORMAT = "iotid-ceremony-record/1"
#: The root certificate names its ceremony record entry by hash in an anyPolicy CPS qualifier.
CPS_PREFIX = "urn:iotid:ceremony:sha256:"
_REFERENCE = re.compile(re.escape(CPS_PREFIX) + r"([0-9a-f]{64})")
GENESIS_PREV = "0" * 64
CREATED = "record.created"
_FIELDS = frozenset({"seq", "time", "actors", "action", "details", "prev", "hash"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ACTION = re.compile(r"[a-z0-9][a-z0-9_.-]*")


class RecordError(Exception):
    """The record is malformed or has been tampered with; says which line and what is wrong."""


def canonical_json(value: Any) -> bytes:
    """The canonical encoding every hash in the record is computed over (spec/canonical.py)."""
    try:
        return _canonical(value)
    except CanonicalJsonError as exc:
        raise RecordError(str(exc)) from None


def entry_digest(body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of an entry's body (every field but ``hash``)."""
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, eq=True)
class Entry:
    seq: int
    time: str
    actors: tuple[str, ...]
    action: str
    details: dict[str, Any]
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        """The entry without ``hash``: what ``hash`` is computed over."""
        return {
            "seq": self.seq,
            "time": self.time,
            "actors": list(self.actors),
            "action": self.action,
            "details": self.details,
            "prev": self.prev,
        }

    def line(self) -> bytes:
        return canonical_json({**self.body(), "hash": self.hash}) + b"\n"

    @classmethod
    def _make(
        cls, seq: int, action: str, details: Mapping[str, Any], actors: Sequence[str], prev: str
    ) -> Entry:
        if not _ACTION.fullmatch(action):
            raise RecordError(f"action {action!r} must be lower-case dotted words")
        if isinstance(actors, str) or not all(isinstance(a, str) and a for a in actors):
            raise RecordError("actors must be a list of non-empty names")
        # Round-trip so that the Entry holds exactly what the file will hold (tuples -> lists).
        plain = json.loads(canonical_json(dict(details)))
        body = {
            "seq": seq,
            "time": _now(),
            "actors": list(actors),
            "action": action,
            "details": plain,
            "prev": prev,
        }
        return cls(seq, body["time"], tuple(actors), action, plain, prev, entry_digest(body))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_line(raw: bytes, number: int, prev: Entry | None, last: bool) -> Entry:
    """One line (without its newline) checked against the entry before it."""
    where = f"line {number}"
    if not raw.strip():
        raise RecordError(f"{where}: empty line")
    try:
        obj = json.loads(raw.decode("ascii"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        if last:
            raise RecordError(f"{where}: truncated or unparsable last line") from None
        raise RecordError(f"{where}: not a JSON object") from None
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: not a JSON object")
    if set(obj) != _FIELDS:
        missing, extra = sorted(_FIELDS - set(obj)), sorted(set(obj) - _FIELDS)
        raise RecordError(f"{where}: wrong fields (missing {missing}, unexpected {extra})")
    seq, time, actors, action = obj["seq"], obj["time"], obj["actors"], obj["action"]
    details, prev_hash, own_hash = obj["details"], obj["prev"], obj["hash"]
    if not (isinstance(seq, int) and not isinstance(seq, bool)):
        raise RecordError(f"{where}: seq is not an integer")
    if not (isinstance(actors, list) and all(isinstance(a, str) for a in actors)):
        raise RecordError(f"{where}: actors is not a list of names")
    if not (isinstance(action, str) and _ACTION.fullmatch(action)):
        raise RecordError(f"{where}: bad action")
    if not isinstance(details, dict):
        raise RecordError(f"{where}: details is not an object")
    for name, value in (("prev", prev_hash), ("hash", own_hash)):
        if not (isinstance(value, str) and _HEX64.fullmatch(value)):
            raise RecordError(f"{where}: {name} is not 64 lower-case hex digits")
    if not isinstance(time, str) or not _is_utc(time):
        raise RecordError(f"{where}: time is not an ISO 8601 UTC timestamp")
    if canonical_json(obj) != raw:
        raise RecordError(f"{where}: not in canonical form (the line was rewritten)")
    entry = Entry(seq, time, tuple(actors), action, details, prev_hash, own_hash)
    if entry_digest(entry.body()) != own_hash:
        raise RecordError(f"{where}: entry hash does not match its content (entry edited)")
    expected_seq = 0 if prev is None else prev.seq + 1
    if seq != expected_seq:
        raise RecordError(
            f"{where}: seq {seq} where {expected_seq} was expected "
            "(lines missing, duplicated or reordered)"
        )
    expected_prev = GENESIS_PREV if prev is None else prev.hash
    if prev_hash != expected_prev:
        raise RecordError(
            f"{where}: prev does not match the hash of the entry before (chain broken)"
        )
    if prev is None and (action != CREATED or details.get("format") != FORMAT):
        raise RecordError(f"{where}: the first entry is not a {FORMAT} header")
    return entry


def _is_utc(text: str) -> bool:
    if not text.endswith("Z"):
        return False
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return False
    return parsed.utcoffset() == dt.timedelta(0)


def parse_lines(data: bytes, start_line: int, prev: Entry | None) -> list[Entry]:
    """Entries of ``data`` (whole lines), the first being line ``start_line``, chained after
    ``prev`` (None: ``data`` starts the record)."""
    if not data:
        return []
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the data ends with a newline
    entries: list[Entry] = []
    for offset, raw in enumerate(lines):
        entry = _parse_line(raw, start_line + offset, prev, last=False)
        entries.append(entry)
        prev = entry
    if tail:
        number = start_line + len(lines)
        try:
            _parse_line(tail, number, prev, last=True)
        except RecordError as exc:
            raise RecordError(f"{exc} (no newline at end of file)") from None
        raise RecordError(f"line {number}: truncated last line (no newline at end of file)")
    return entries


def parse_record(data: bytes) -> list[Entry]:
    """Every entry of a whole record's bytes, verified (:class:`RecordError` names the fault)."""
    if not data:
        raise RecordError("the record is empty")
    return parse_lines(data, 1, None)


def ceremony_reference(cert: x509.Certificate) -> str | None:
    """The record entry hash a root certificate names (CPS qualifier), if it names exactly one."""
    try:
        policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except x509.ExtensionNotFound:
        return None
    found = [
        match.group(1)
        for policy in policies
        for qualifier in policy.policy_qualifiers or []
        if isinstance(qualifier, str) and (match := _REFERENCE.fullmatch(qualifier))
    ]
    return found[0] if len(found) == 1 else None

"""The ceremony record: an append-only, hash-chained, machine-readable log (JSON Lines).

Scope: the file format, writing (create, append under an exclusive lock, fsync) and verifying.
One entry per line, each line the *canonical JSON* of the entry (keys sorted, separators
``","``/``":"``, ASCII only, no NaN), with the fields:

- ``seq``: 0, 1, 2, ... (the line number minus one);
- ``time``: UTC, ISO 8601 with microseconds and a ``Z`` (``2025-01-31T12:00:00.000000Z``);
- ``actors``: who performed the step (custodians, operator, ``iotid`` for automatic steps);
- ``action``: dotted name of the step (``keystore.created``, ``root.certificate.issued``, ...);
- ``details``: a JSON object (public facts only: never key material, never share words);
- ``prev``: the ``hash`` of the previous entry (64 zeros for entry 0);
- ``hash``: SHA-256 (hex) of the canonical JSON of the entry without its ``hash`` field.

Since ``hash`` covers every other field including ``prev``, each entry commits to the whole
record before it. Entry 0 is ``record.created`` with ``details = {"format": FORMAT, "header":
{...}}``. :meth:`Record.verify` names the line and the fault: unparsable or truncated line,
non-canonical line, edited entry (hash mismatch), missing / duplicated / reordered lines (seq),
broken chain (prev). What a chain alone cannot show is the *removal of the newest entries*: that
needs an anchor outside the file (the root certificate names an entry hash; see ``ceremony``).
The pure format code (entries, hashing, line and chain checks) is in
``iotid.spec.ceremony_record`` and re-exported here. Not in scope: what the entries mean
(``ceremony``, the batch modules).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The format itself (entries, hashing, the chain rule) lives in spec so that readers of a copy
# of the record (the fleet's trace) check it with the same code without importing the factory.
from iotid.spec.ceremony_record import (
    CREATED,
    FORMAT,
    GENESIS_PREV,
    Entry,
    RecordError,
    canonical_json,
    parse_lines,
    parse_record,
)


class Record:
    """An open record file; ``open``/``create`` verify or write it, ``append`` extends it."""

    def __init__(self, path: Path, entries: list[Entry], size: int) -> None:
        self._path = path
        self._entries = entries
        self._size = size

    def __repr__(self) -> str:
        return f"Record({str(self._path)!r}, entries={len(self._entries)})"

    @classmethod
    def create(
        cls, path: Path, header: Mapping[str, Any], actors: Sequence[str] = ("iotid",)
    ) -> Record:
        """A new record holding only its header entry; refuses an existing file."""
        entry = Entry._make(
            0, CREATED, {"format": FORMAT, "header": dict(header)}, actors, GENESIS_PREV
        )
        line = entry.line()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(path.parent)
        return cls(path, [entry], len(line))

    @classmethod
    def open(cls, path: Path) -> Record:
        """Open and verify the whole record (:class:`RecordError` if anything is wrong)."""
        record = cls(path, [], 0)
        record.verify()
        return record

    @property
    def path(self) -> Path:
        return self._path

    @property
    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries)

    @property
    def head(self) -> Entry:
        return self._entries[-1]

    @property
    def head_hash(self) -> str:
        return self._entries[-1].hash

    @property
    def header(self) -> dict[str, Any]:
        header: dict[str, Any] = self._entries[0].details["header"]
        return header

    def find(self, entry_hash: str) -> Entry | None:
        return next((e for e in self._entries if e.hash == entry_hash), None)

    def verify(self) -> list[Entry]:
        """Re-read the file and check every line; returns the entries."""
        try:
            data = self._path.read_bytes()
        except FileNotFoundError:
            raise RecordError(f"no record at {self._path}") from None
        except OSError as exc:
            raise RecordError(f"cannot read {self._path}: {exc.strerror}") from None
        entries = parse_record(data)
        self._entries, self._size = entries, len(data)
        return list(entries)

    def append(
        self, action: str, details: Mapping[str, Any], actors: Sequence[str] = ("iotid",)
    ) -> Entry:
        """Add one entry after the newest one, under an exclusive lock, and fsync it.

        Entries another process appended since this object last read the file are verified and
        chained onto; a file that changed below what was read is refused.
        """
        with open(self._path, "r+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                size = os.fstat(f.fileno()).st_size
                last_line = self.head.line()
                known_from = self._size - len(last_line)
                f.seek(known_from)
                if size < self._size or f.read(len(last_line)) != last_line:
                    raise RecordError(
                        "the record changed below its last verified entry; verify it again"
                    )
                newer = parse_lines(f.read(), len(self._entries) + 1, self.head)
                self._entries.extend(newer)
                entry = Entry._make(self.head.seq + 1, action, details, actors, self.head_hash)
                line = entry.line()
                f.seek(0, os.SEEK_END)
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        self._entries.append(entry)
        self._size = size + len(line)
        return entry


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["CREATED", "FORMAT", "GENESIS_PREV", "Entry", "Record", "RecordError", "canonical_json"]

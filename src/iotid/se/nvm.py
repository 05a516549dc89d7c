"""Persistent, transactional non-volatile memory for the emulated secure element.

Scope: a record store (``str`` key -> ``bytes`` value) under a state directory, with Java Card
style transactions: every APDU's writes commit atomically or not at all. The whole image is
written to a temporary file and renamed over the previous one (``os.replace`` is atomic on
POSIX), so a process killed at any instant leaves either the old image or the new one, never a
mix. Each image carries a SHA-256 digest, checked when it is loaded.

Durability: with ``durable=True`` (the default) every commit is fsync'd (file and directory),
which also survives an operating-system crash; ``durable=False`` survives ``kill -9`` of the card
process (the page cache outlives the process) and is for large simulations.

Not in scope: what the records mean (the card, its applets and the key store decide), and
secrecy of the image on the host's disk (the file *is* the emulated silicon).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

IMAGE_NAME = "nvm.bin"
_MAGIC = b"IOTIDNVM"
_VERSION = 1
_HEADER = struct.Struct(">8sBQI")  # magic, version, commit sequence, record count
_DIGEST_LEN = 32


class NvmError(Exception):
    """The persistent image is missing, corrupt, or used outside a transaction."""


class Nvm:
    """A record store with one open transaction at a time.

    ``get`` sees the transaction's own writes; ``commit`` makes them durable in one step;
    ``rollback`` forgets them. Writes outside a transaction are refused.
    """

    def __init__(self, path: Path | None, *, durable: bool = True) -> None:
        self._path = path
        self._durable = durable
        self._committed: dict[str, bytes] = {}
        self._pending: dict[str, bytes | None] | None = None
        self._sequence = 0
        self.commits = 0  # commits written by this instance (for benchmarks)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def create(cls, state_dir: Path, *, durable: bool = True) -> Nvm:
        """A new, empty image in ``state_dir`` (which must not hold one already)."""
        state_dir.mkdir(parents=True, exist_ok=True)
        image = state_dir / IMAGE_NAME
        if image.exists():
            raise NvmError(f"{state_dir} already holds a card")
        nvm = cls(image, durable=durable)
        nvm._write_image()
        return nvm

    @classmethod
    def open(cls, state_dir: Path, *, durable: bool = True) -> Nvm:
        """Load the image in ``state_dir``; a temporary file left by a torn commit is removed."""
        image = state_dir / IMAGE_NAME
        tmp = image.with_suffix(".tmp")
        if tmp.exists():
            tmp.unlink()
        if not image.exists():
            raise NvmError(f"{state_dir} holds no card (no {IMAGE_NAME})")
        nvm = cls(image, durable=durable)
        nvm._committed, nvm._sequence = _decode(image.read_bytes())
        return nvm

    @classmethod
    def in_memory(cls) -> Nvm:
        """A volatile store with the same transaction semantics (for tests and simulations)."""
        return cls(None)

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        if self._pending is not None and key in self._pending:
            return self._pending[key]
        return self._committed.get(key)

    def keys(self, prefix: str = "") -> list[str]:
        names = set(k for k in self._committed if k.startswith(prefix))
        if self._pending is not None:
            for k, v in self._pending.items():
                if not k.startswith(prefix):
                    continue
                if v is None:
                    names.discard(k)
                else:
                    names.add(k)
        return sorted(names)

    @property
    def sequence(self) -> int:
        """Number of commits in the image's life (persistent)."""
        return self._sequence

    # -- writes -------------------------------------------------------------------------------
    def put(self, key: str, value: bytes) -> None:
        pending = self._require_transaction()
        self._write_point(f"put {key}")
        pending[key] = bytes(value)

    def delete(self, key: str) -> None:
        pending = self._require_transaction()
        self._write_point(f"delete {key}")
        pending[key] = None

    # -- transactions -------------------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._pending is not None

    def begin(self) -> None:
        if self._pending is not None:
            raise NvmError("transaction already open")
        self._pending = {}

    def commit(self) -> None:
        pending = self._require_transaction()
        self._pending = None
        changed = {k: v for k, v in pending.items() if self._committed.get(k) != v}
        if not changed:
            return
        new = dict(self._committed)
        for k, v in changed.items():
            if v is None:
                new.pop(k, None)
            else:
                new[k] = v
        old, old_seq = self._committed, self._sequence
        self._committed, self._sequence = new, self._sequence + 1
        try:
            self._write_image()
        except BaseException:
            self._committed, self._sequence = old, old_seq
            raise

    def rollback(self) -> None:
        self._pending = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """``with nvm.transaction():`` commits on success, rolls back on any exception."""
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    # -- internals ----------------------------------------------------------------------------
    def _require_transaction(self) -> dict[str, bytes | None]:
        if self._pending is None:
            raise NvmError("NVM write outside a transaction")
        return self._pending

    def _write_point(self, label: str) -> None:
        """A point where a real card writes to its EEPROM/flash.

        A no-op; the tearing tests replace it to kill the process exactly here.
        """

    def _write_image(self) -> None:
        self.commits += 1
        if self._path is None:
            return
        blob = _encode(self._committed, self._sequence)
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            half = len(blob) // 2
            os.write(fd, blob[:half])
            self._write_point("image first half")
            os.write(fd, blob[half:])
            self._write_point("image second half")
            if self._durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._write_point("before rename")
        os.replace(tmp, self._path)
        self._write_point("after rename")
        if self._durable:
            dfd = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def _encode(records: dict[str, bytes], sequence: int) -> bytes:
    parts = [_HEADER.pack(_MAGIC, _VERSION, sequence, len(records))]
    for key in sorted(records):
        name = key.encode()
        value = records[key]
        parts.append(struct.pack(">H", len(name)) + name + struct.pack(">I", len(value)) + value)
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def _decode(blob: bytes) -> tuple[dict[str, bytes], int]:
    if len(blob) < _HEADER.size + _DIGEST_LEN:
        raise NvmError("NVM image truncated")
    body, digest = blob[:-_DIGEST_LEN], blob[-_DIGEST_LEN:]
    if hashlib.sha256(body).digest() != digest:
        raise NvmError("NVM image digest mismatch")
    magic, version, sequence, count = _HEADER.unpack_from(body)
    if magic != _MAGIC or version != _VERSION:
        raise NvmError("not an iotid NVM image")
    records: dict[str, bytes] = {}
    off = _HEADER.size
    try:
        for _ in range(count):
            (nlen,) = struct.unpack_from(">H", body, off)
            off += 2
            name = body[off : off + nlen].decode()
            off += nlen
            (vlen,) = struct.unpack_from(">I", body, off)
            off += 4
            records[name] = body[off : off + vlen]
            off += vlen
    except (struct.error, UnicodeDecodeError) as exc:
        raise NvmError("NVM image malformed") from exc
    if off != len(body):
        raise NvmError("NVM image has trailing bytes")
    return records, sequence

"""Benchmark: what the card's per-APDU NVM commit costs, against the raw file-system operations.

Scope: ``card.process`` of a state-changing APDU, plain INITIALIZE UPDATE (``80 50 30 00 08``
+ host challenge: it increments the persistent SCP03 sequence counter, one record, one commit),
on three cards: a file NVM with ``durable=True`` (fsync of file and directory), a file NVM with
``durable=False``, and an in-memory NVM. Each is timed in alternation with its bound, measured in
the same run: writing a file of the NVM image's size then ``os.fsync`` and ``os.replace``
(durable; also shown with the directory fsync a durable rename needs), the same without fsync
(non-durable), and copying a dict of the card's records (in-memory). Printed: absolute
microseconds, the cost ratio (µs per APDU ÷ µs of the bound) and, per file card, the commit
estimate (µs per APDU on that card minus µs on the in-memory card) over the bound.

Not in scope: power-loss correctness (the kill -9 tests do that), reads, images of other sizes,
secure-messaging cost (``bench_apdu.py``). The temporary directory lives under /tmp, so its
file system decides what fsync costs; its type is printed.

Run: ``.venv/bin/python bench/bench_nvm.py`` (about 15 s; longer on a slow disk).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from _util import (
    Measurement,
    calibrate,
    console,
    environment,
    filesystem_of,
    fmt_ratio,
    fmt_us,
    measure_interleaved,
    new_table,
    summarize,
)
from iotid.se import Card
from iotid.se.nvm import IMAGE_NAME
from iotid.spec.gp import TEST_KEY_VERSION, GpIns

UID = bytes(10)
#: INITIALIZE UPDATE (GPC 2.3.1 Amd D §7.1.1), KVN 30, plain; the 8-byte host challenge.
INIT_UPDATE = bytes([0x80, GpIns.INITIALIZE_UPDATE, TEST_KEY_VERSION, 0x00, 0x08]) + bytes(range(8))


class FileBound:
    """The raw cost of replacing a file atomically: open, write, [fsync], close, rename,
    [fsync of the directory]. Same shape as the NVM's commit, without encoding or hashing."""

    def __init__(self, directory: Path, size: int, *, fsync: bool, fsync_dir: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.target = directory / "image.bin"
        self.tmp = directory / "image.tmp"
        self.directory = directory
        self.blob = os.urandom(size)
        self.fsync = fsync
        self.fsync_dir = fsync_dir

    def __call__(self) -> None:
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, self.blob)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.target)
        if self.fsync_dir:
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


def dict_copy_bound(records: dict[str, bytes]) -> Callable[[], object]:
    """The in-memory NVM's commit floor: one shallow copy of the record dict."""
    return partial(dict, records)


def check_card(card: Card) -> None:
    """INITIALIZE UPDATE must succeed and commit exactly once, or the benchmark measures nothing."""
    before = card.nvm.commits
    answer = card.process(INIT_UPDATE)
    if answer[-2:] != b"\x90\x00" or len(answer) != 34:
        raise SystemExit(f"INITIALIZE UPDATE answered {answer[-2:].hex()}")
    if card.nvm.commits != before + 1:
        raise SystemExit("INITIALIZE UPDATE did not commit exactly once")


@dataclass(frozen=True)
class Row:
    card: str
    bound_name: str
    subject: Measurement
    bound: Measurement
    cost: float  # median over rounds of subject ÷ bound
    commit: Measurement | None  # subject minus the in-memory card, round by round
    commit_cost: float | None  # median over rounds of (subject - in-memory) ÷ bound


def _row(
    card: str, bound_name: str, batches: tuple[int, int], subject: list[float], bound: list[float]
) -> Row:
    return Row(
        card,
        bound_name,
        summarize(card, subject, batches[0]),
        summarize(bound_name, bound, batches[1]),
        statistics.median(s / b for s, b in zip(subject, bound, strict=True)),
        None,
        None,
    )


def run(root: Path, target_s: float, reps: int) -> None:
    console.print(environment())
    durable = Card.create(root / "durable", uid=UID, durable=True)
    volatile = Card.create(root / "volatile", uid=UID, durable=False)
    memory = Card.create(None, uid=UID)
    for card in (durable, volatile, memory):
        check_card(card)
    size = (root / "durable" / IMAGE_NAME).stat().st_size
    records = {k: v for k in memory.nvm.keys(prefix="") if (v := memory.nvm.get(k)) is not None}
    console.print(
        f"NVM image: {size} bytes, {len(records)} records; temp dir {root} on {filesystem_of(root)}"
    )

    bounds: dict[str, Callable[[], object]] = {
        "write+fsync+rename": FileBound(root / "b1", size, fsync=True, fsync_dir=False),
        "write+fsync+rename+dirsync": FileBound(root / "b2", size, fsync=True, fsync_dir=True),
        "write+rename": FileBound(root / "b3", size, fsync=False, fsync_dir=False),
        "dict copy": dict_copy_bound(records),
    }
    subjects = {
        "file, durable=True": partial(durable.process, INIT_UPDATE),
        "file, durable=False": partial(volatile.process, INIT_UPDATE),
        "in-memory": partial(memory.process, INIT_UPDATE),
    }
    batch = {name: calibrate(fn, target_s=target_s) for name, fn in (bounds | subjects).items()}

    rows: list[Row] = []
    mem = subjects["in-memory"]
    plan = [
        ("file, durable=True", "write+fsync+rename"),
        ("file, durable=True", "write+fsync+rename+dirsync"),
        ("file, durable=False", "write+rename"),
    ]
    for name, bound in plan:
        fn, bfn = subjects[name], bounds[bound]
        s, b, m = measure_interleaved(
            [(fn, batch[name]), (bfn, batch[bound]), (mem, batch["in-memory"])], reps=reps
        )
        row = _row(name, bound, (batch[name], batch[bound]), s, b)
        deltas = [si - mi for si, mi in zip(s, m, strict=True)]
        rows.append(
            replace(
                row,
                commit=summarize("commit", deltas, batch[name]),
                commit_cost=statistics.median(c / bi for c, bi in zip(deltas, b, strict=True)),
            )
        )
    copy = bounds["dict copy"]
    s, b = measure_interleaved([(mem, batch["in-memory"]), (copy, batch["dict copy"])], reps=reps)
    rows.append(_row("in-memory", "dict copy", (batch["in-memory"], batch["dict copy"]), s, b))

    table = new_table(
        "NVM commit cost per APDU: INITIALIZE UPDATE (cost ratio = µs/APDU ÷ µs of the bound)",
        [
            ("card", "left"),
            ("µs/APDU", "right"),
            ("bound", "left"),
            ("bound µs", "right"),
            ("cost ratio", "right"),
            ("commit µs", "right"),
            ("commit ÷ bound", "right"),
        ],
    )
    for r in rows:
        commit_us = "-" if r.commit is None else fmt_us(r.commit.per_op)
        commit_cost = "-" if r.commit_cost is None else fmt_ratio(r.commit_cost)
        table.add_row(
            r.card,
            fmt_us(r.subject.per_op),
            r.bound_name,
            fmt_us(r.bound.per_op),
            fmt_ratio(r.cost),
            commit_us,
            commit_cost,
        )
    console.print(table)
    console.print(
        "Cost ratio 1.0 = the APDU costs no more than its bound. 'commit µs' = µs/APDU on the file "
        "card minus µs/APDU on the in-memory card (the APDU's own work: SCP03 key derivation and "
        "cryptograms), timed in the same rounds. Every figure is a median over rounds in which "
        "the subject, its bound and the in-memory card ran one after another. dirsync = fsync of "
        "the directory after the rename, which durable=True also does."
    )
    for r in rows:
        line = (
            f"{r.card}: {fmt_us(r.subject.per_op)} µs per INITIALIZE UPDATE vs {r.bound_name} "
            f"{fmt_us(r.bound.per_op)} µs: cost ratio {fmt_ratio(r.cost)}"
        )
        if r.commit is not None and r.commit_cost is not None:
            line += (
                f"; commit alone ~{fmt_us(r.commit.per_op)} µs = {fmt_ratio(r.commit_cost)} x bound"
            )
        console.print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", type=float, default=0.15, help="seconds per timed batch")
    parser.add_argument(
        "--reps", type=int, default=7, help="timed batches per figure (median kept)"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="iotid-bench-nvm-", dir="/tmp"))
    try:
        run(root, args.target, args.reps)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

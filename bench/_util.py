"""Shared helpers for the benchmark scripts in ``bench/``: timing and rich tables.

Scope: :func:`measure` times a zero-argument callable with ``time.perf_counter`` (warm-up, a
batch size calibrated to a target duration, the median of several repetitions);
:func:`measure_paired` times a subject and its bound in alternating batches and keeps the median
of the per-repetition ratios (robust to load changes on a shared machine); :func:`median_of`
pools several measurements of the same operation; formatting helpers, rich tables and a
one-line environment description.

Not in scope: what is measured (each ``bench_*.py`` script decides), statistics beyond
median/min/max, and any assertion on timings (benchmarks report, they do not fail).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = [
    "Measurement",
    "Paired",
    "calibrate",
    "measure_interleaved",
    "measure_paired",
    "summarize",
    "console",
    "environment",
    "fmt_rate",
    "fmt_ratio",
    "fmt_us",
    "filesystem_of",
    "measure",
    "median_of",
    "new_table",
]

#: Tables stay unwrapped when the output is piped to a file.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 132)


@dataclass(frozen=True)
class Measurement:
    """Seconds per operation: the median, fastest and slowest of ``reps`` batches of ``batch``."""

    label: str
    per_op: float
    fastest: float
    slowest: float
    batch: int
    reps: int

    @property
    def ops_per_s(self) -> float:
        return 1.0 / self.per_op

    @property
    def us(self) -> float:
        return self.per_op * 1e6

    @property
    def spread(self) -> float:
        """(slowest - fastest) / median: how noisy the repetitions were."""
        return (self.slowest - self.fastest) / self.per_op


def _run(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - start


def measure(
    label: str,
    fn: Callable[[], object],
    *,
    target_s: float = 0.15,
    reps: int = 5,
    warmup_s: float = 0.05,
    max_batch: int = 1_000_000,
) -> Measurement:
    """Time ``fn()`` per call.

    Warm up for about ``warmup_s`` (which also estimates the cost of one call), size a batch to
    last about ``target_s``, then time ``reps`` batches and keep the median per-call time.
    """
    batch = min(max_batch, calibrate(fn, target_s=target_s, warmup_s=warmup_s))
    samples = [_run(fn, batch) / batch for _ in range(reps)]
    return Measurement(label, statistics.median(samples), min(samples), max(samples), batch, reps)


def calibrate(fn: Callable[[], object], *, target_s: float, warmup_s: float = 0.05) -> int:
    """Warm ``fn`` up for about ``warmup_s``; return a batch size lasting about ``target_s``."""
    n, spent = 1, 0.0
    while spent < warmup_s:
        spent = _run(fn, n)
        if spent < warmup_s:
            n *= 2
    return max(1, round(n * target_s / max(spent, 1e-9)))


@dataclass(frozen=True)
class Paired:
    """A subject timed in alternation with its bound; ``ratio`` = subject rate ÷ bound rate,
    the median of the per-repetition ratios (each from two adjacent batches)."""

    subject: Measurement
    bound: Measurement
    ratio: float


def measure_interleaved(
    fns: Sequence[tuple[Callable[[], object], int]], *, reps: int
) -> list[list[float]]:
    """Run each (callable, batch size) in turn, ``reps`` times round; per callable, the seconds
    per call of each round. Figures from the same round were taken moments apart."""
    out: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for samples, (fn, batch) in zip(out, fns, strict=True):
            samples.append(_run(fn, batch) / batch)
    return out


def summarize(label: str, samples: Sequence[float], batch: int) -> Measurement:
    return Measurement(
        label, statistics.median(samples), min(samples), max(samples), batch, len(samples)
    )


def measure_paired(
    label: str,
    fn: Callable[[], object],
    bound_fn: Callable[[], object],
    bound_batch: int,
    *,
    target_s: float = 0.1,
    reps: int = 5,
) -> Paired:
    """Time ``fn`` and ``bound_fn`` in alternating batches, so that a change of machine load
    during the run hits both sides of each ratio alike."""
    batch = calibrate(fn, target_s=target_s)
    subject, bound = measure_interleaved([(fn, batch), (bound_fn, bound_batch)], reps=reps)
    ratio = statistics.median(b / s for s, b in zip(subject, bound, strict=True))
    return Paired(summarize(label, subject, batch), summarize("bound", bound, bound_batch), ratio)


def median_of(label: str, parts: Sequence[Measurement]) -> Measurement:
    """Pool measurements of the same operation: the median of their medians."""
    return Measurement(
        label,
        statistics.median(m.per_op for m in parts),
        min(m.fastest for m in parts),
        max(m.slowest for m in parts),
        sum(m.batch for m in parts),
        sum(m.reps for m in parts),
    )


def fmt_rate(ops_per_s: float) -> str:
    return f"{ops_per_s:,.0f}"


def fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:,.1f}" if us < 1000 else f"{us:,.0f}"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.3f}" if ratio < 10 else f"{ratio:.1f}"


def new_table(title: str, columns: Sequence[tuple[str, str]]) -> Table:
    """A table whose columns are (header, justify) pairs."""
    table = Table(title=title, title_justify="left")
    for header, justify in columns:
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    return table


def filesystem_of(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/mounts), or "?"."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "?"
    best, kind = "", "?"
    target = str(path.resolve())
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def environment() -> str:
    try:
        crypto = version("cryptography")
    except PackageNotFoundError:  # pragma: no cover - it is a dependency
        crypto = "?"
    return (
        f"Python {platform.python_version()} ({sys.implementation.name}), cryptography {crypto}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    )

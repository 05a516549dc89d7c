"""Many simulated devices in one process: a thread pool over :class:`~iotid.device.app.DeviceApp`.

Scope: :class:`Swarm` runs one phase (any ``fn(app)``: ``DeviceApp.boot``,
``DeviceApp.send_telemetry``, a lambda...) over every device on a pool of worker threads (the
TLS stack is synchronous; the card work and the TLS crypto release the GIL only in part, so
the pool mostly overlaps network waits) and returns a :class:`PhaseResult`: counts, wall time,
per-device durations, one-line errors and the results in input order. ``on_done(index, ok)``
is called from the worker thread as each device finishes (progress bars). A failing device
never stops the phase.
Not in scope: what a phase does (the device application), building the devices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from iotid.device.app import DeviceApp

__all__ = ["PhaseResult", "Swarm"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class PhaseResult:
    """One phase over the swarm."""

    name: str
    ok: int
    failed: int
    wall_seconds: float
    #: Per device, seconds, in input order.
    durations: list[float] = field(default_factory=list)
    #: uid (or ``#index`` before the UID is known) -> one-line reason.
    errors: dict[str, str] = field(default_factory=dict)
    #: Per device, in input order (None when it failed).
    results: list[object] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Devices per second over the phase's wall time."""
        return (self.ok + self.failed) / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def percentile(self, fraction: float) -> float:
        """A per-device duration percentile (``fraction`` in [0, 1]); 0 without devices."""
        if not self.durations:
            return 0.0
        ordered = sorted(self.durations)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Swarm:
    """A pool of ``workers`` threads over ``apps``."""

    def __init__(self, apps: Sequence[DeviceApp], *, workers: int = 16) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.apps = list(apps)
        self.workers = workers

    def __repr__(self) -> str:
        return f"Swarm({len(self.apps)} devices, workers={self.workers})"

    def phase(
        self,
        name: str,
        fn: Callable[[DeviceApp], T],
        *,
        on_done: Callable[[int, bool], None] | None = None,
    ) -> PhaseResult:
        """Run ``fn`` on every device; never raises for a device's failure."""
        count = len(self.apps)
        durations = [0.0] * count
        results: list[object] = [None] * count
        errors: dict[str, str] = {}
        ok = [False] * count

        def one(index: int) -> None:
            app = self.apps[index]
            start = time.perf_counter()
            try:
                results[index] = fn(app)
                ok[index] = True
            except Exception as exc:  # a device's failure is its own; the phase goes on
                errors[app.uid or f"#{index}"] = _one_line(exc)
                log.debug("phase %s: device %s failed", name, app.uid, exc_info=True)
            finally:
                durations[index] = time.perf_counter() - start
                if on_done is not None:
                    on_done(index, ok[index])

        start = time.perf_counter()
        if count:
            with ThreadPoolExecutor(
                max_workers=min(self.workers, count), thread_name_prefix=f"swarm-{name}"
            ) as pool:
                for future in [pool.submit(one, i) for i in range(count)]:
                    future.result()
        wall = time.perf_counter() - start
        good = sum(ok)
        return PhaseResult(name, good, count - good, wall, durations, errors, results)

    def close(self) -> None:
        """Close every device."""
        for app in self.apps:
            app.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}"

"""``iotid demo``: the whole product on one machine, a simulated fleet end to end.

Scope: :func:`run_demo` (``iotid.demo.run``) makes a key ceremony with a quorum, a batch of
emulated cards off the personalisation line, starts the fleet on its embedded default (SQLite,
localhost ports it picks), and takes every device through enrollment, mutual-TLS telemetry, a
signed firmware rollout and a tampered image, a rotation and one revocation, then verifies the
audit log and traces one device down to the ceremony record. :class:`DemoReport` says what
happened with the measured rates and the revocation latency; :class:`DemoEvent` feeds progress
bars. Secrets are never printed.

Not in scope: rendering and argument parsing (``iotid.cli.main``); the benchmark over fleet
sizes (``bench/bench_demo.py``).
"""

from __future__ import annotations

from iotid.demo.report import (
    DemoEvent,
    DemoReport,
    EventKind,
    PhaseTiming,
    RevocationResult,
    Step,
    TraceChain,
    TraceLink,
)
from iotid.demo.run import run_demo

__all__ = [
    "DemoEvent",
    "DemoReport",
    "EventKind",
    "PhaseTiming",
    "RevocationResult",
    "Step",
    "TraceChain",
    "TraceLink",
    "run_demo",
]

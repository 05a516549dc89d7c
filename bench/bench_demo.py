"""Benchmark: ``iotid demo`` over fleets of growing size: wall time, peak memory, the time per
device broken down by phase, how the cost grows with the fleet, and the per-device enrollment
cost as a ratio to the raw cryptography bound measured in the same run.

Scope: for each size on the command line (default 100 1000 10000) a fresh child process
(``--child``) runs :func:`iotid.demo.run_demo` in-process in a temporary directory (the factory,
the fleet on SQLite in a background thread, N devices through the swarm) and reports the demo's
JSON, its wall time and its peak RSS (``resource.getrusage``, the child's own maximum: one child
per size, so the figures do not accumulate). The child prints its steps and phases on stderr as
they finish, so the log of a long run shows where it stands. The parent prints:

- per size: wall time, peak RSS, whether the demo passed, per-device time of every phase
  (phase wall ÷ devices: what the fleet's throughput costs per device, concurrency included);
- growth: for each phase, time per device at the larger size ÷ at the smaller (1.0 = linear
  cost; above 1 grows faster than the fleet);
- bound: one ECDSA P-256 sign + verify with ``cryptography`` (keys loaded), timed in the parent
  right before and after the children; ratio = bound ÷ per-device enrollment time (an
  enrollment needs several signatures and verifies, so even a perfect stack stays well below 1;
  compare ratios across sizes and machines, not to 1).

Run: ``.venv/bin/python bench/bench_demo.py 100 1000`` (10,000 devices take long: see the
README). ``--workers`` sets the swarm's threads (default 8).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from _util import console, environment, fmt_ratio, measure, new_table
from iotid.demo import DemoEvent, EventKind, run_demo


def _child(devices: int, workers: int, out: Path) -> None:
    logging.basicConfig(level=logging.ERROR)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.ERROR)
    started = time.perf_counter()

    def progress(event: DemoEvent) -> None:
        """Where a long run stands (stderr, inherited by the parent: a log shows it)."""
        if event.kind is not EventKind.ADVANCE:
            mark = "" if event.ok else f" FAILED: {event.detail}"
            elapsed = time.perf_counter() - started
            print(f"  [{elapsed:7.1f} s] {event.kind.value} {event.name}{mark}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="iotid-bench-demo-") as tmp:
        report = run_demo(Path(tmp) / "demo", devices=devices, workers=workers, on_event=progress)
        wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    doc = {"report": report.to_dict(), "wall": wall, "peak_rss_kib": peak_kib}
    out.write_text(json.dumps(doc), encoding="utf-8")


def _run_size(devices: int, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iotid-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(devices),
            "--workers",
            str(workers),
            "--out",
            str(out),
        ]
        started = time.perf_counter()
        done = subprocess.run(cmd, check=False)  # noqa: S603 - this script, fixed arguments
        elapsed = time.perf_counter() - started
        if done.returncode != 0 or not out.exists():
            console.print(f"[red]{devices} devices: child failed (exit {done.returncode})[/red]")
            return {"devices": devices, "failed": True, "elapsed": elapsed}
        doc: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    doc["devices"] = devices
    doc["elapsed"] = elapsed
    return doc


def _bound() -> float:
    """Seconds for one ECDSA P-256 sign + verify of a 64-byte message (keys loaded)."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    message = os.urandom(64)
    algorithm = ec.ECDSA(hashes.SHA256())

    def sign_verify() -> None:
        public.verify(key.sign(message, algorithm), message, algorithm)

    return measure("P-256 sign+verify", sign_verify, target_s=0.2, reps=5).per_op


def _per_device(doc: dict[str, Any]) -> dict[str, float]:
    n = doc["devices"]
    return {p["name"]: p["wall_seconds"] / n for p in doc["report"]["phases"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[100, 1000, 10000])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child, args.workers, args.out)
        return

    console.print(f"[bold]bench_demo[/bold]: {environment()}; swarm workers {args.workers}")
    bound_before = _bound()
    docs = []
    for size in args.sizes:
        console.print(f"running the demo with {size:,} devices ...")
        docs.append(_run_size(size, args.workers))
    bound = (bound_before + _bound()) / 2
    ok_docs = [d for d in docs if not d.get("failed")]
    _summary(docs)
    phase_names = _phase_table(ok_docs)
    if len(ok_docs) > 1:
        _growth_table(ok_docs, phase_names)
    _bound_table(ok_docs, bound)


def _summary(docs: list[dict[str, Any]]) -> None:
    summary = new_table(
        "demo runs",
        [
            ("devices", "right"),
            ("passed", "left"),
            ("wall s", "right"),
            ("per device ms", "right"),
            ("peak RSS MiB", "right"),
            ("RSS per device KiB", "right"),
            ("failed steps", "left"),
        ],
    )
    for doc in docs:
        if doc.get("failed"):
            summary.add_row(f"{doc['devices']:,}", "[red]crashed[/red]", "", "", "", "", "")
            continue
        report = doc["report"]
        n = doc["devices"]
        failed = [s["name"] for s in report["steps"] if not s["ok"]]
        summary.add_row(
            f"{n:,}",
            "yes" if report["ok"] else "[red]NO[/red]",
            f"{doc['wall']:.1f}",
            f"{doc['wall'] / n * 1000:.1f}",
            f"{doc['peak_rss_kib'] / 1024:.0f}",
            f"{doc['peak_rss_kib'] / n:.0f}",
            ", ".join(failed) or "-",
        )
    console.print(summary)


def _phase_table(ok_docs: list[dict[str, Any]]) -> list[str]:
    phase_names: list[str] = []
    for doc in ok_docs:
        for name in _per_device(doc):
            if name not in phase_names:
                phase_names.append(name)
    per_phase = new_table(
        "time per device by phase (phase wall ÷ devices, ms)",
        [("phase", "left")] + [(f"{d['devices']:,}", "right") for d in ok_docs],
    )
    for name in phase_names:
        row = [name]
        for doc in ok_docs:
            value = _per_device(doc).get(name)
            row.append("-" if value is None else f"{value * 1000:.2f}")
        per_phase.add_row(*row)
    totals = ["whole demo"] + [f"{d['wall'] / d['devices'] * 1000:.2f}" for d in ok_docs]
    per_phase.add_row(*totals)
    console.print(per_phase)
    return phase_names


def _growth_table(ok_docs: list[dict[str, Any]], phase_names: list[str]) -> None:
    growth = new_table(
        "growth: time per device at the larger size ÷ at the smaller (1.0 = linear)",
        [("phase", "left")]
        + [
            (f"{a['devices']:,} -> {b['devices']:,}", "right")
            for a, b in itertools.pairwise(ok_docs)
        ],
    )
    for name in [*phase_names, "whole demo"]:
        row = [name]
        for a, b in itertools.pairwise(ok_docs):
            if name == "whole demo":
                pa, pb = a["wall"] / a["devices"], b["wall"] / b["devices"]
            else:
                pa, pb = _per_device(a).get(name, 0.0), _per_device(b).get(name, 0.0)
            row.append(fmt_ratio(pb / pa) if pa > 0 else "-")
        growth.add_row(*row)
    console.print(growth)


def _bound_table(ok_docs: list[dict[str, Any]], bound: float) -> None:
    ratios = new_table(
        f"enrollment cost vs the bound (one P-256 sign+verify: {bound * 1e6:,.0f} µs)",
        [
            ("devices", "right"),
            ("enrollments/s", "right"),
            ("ms per enrollment", "right"),
            ("ratio bound ÷ enrollment", "right"),
            ("revocation latency ms", "right"),
        ],
    )
    for doc in ok_docs:
        enroll = _per_device(doc).get("boot + enroll")
        rate = doc["report"]["rates"].get("enrollments/s", 0.0)
        revocation = doc["report"].get("revocation") or {}
        latency = revocation.get("latency_seconds")
        ratios.add_row(
            f"{doc['devices']:,}",
            f"{rate:,.1f}",
            "-" if enroll is None else f"{enroll * 1000:.1f}",
            "-" if not enroll else fmt_ratio(bound / enroll),
            "-" if latency is None else f"{latency * 1000:.0f}",
        )
    console.print(ratios)


if __name__ == "__main__":
    main()

"""``iotid device swarm``: many device applications in one process against a running fleet.

Scope: finds the card state directories under ``--cards`` (what ``iotid factory personalise``
writes), builds one :class:`~iotid.device.app.DeviceApp` per card (state next to each card,
``<card>.fleet``), boots them all on a :class:`~iotid.device.swarm.Swarm`, then runs ``--cycles``
cycles (telemetry, commands, firmware, scheduled rotation) with a progress bar per phase, and
prints a table per phase (ok, failed, wall time, rate, per-device p50/p99) and the devices'
final states. Exit 0 when every device is well, 3 when any was revoked, 1 otherwise.
Registered on ``iotid device`` by :mod:`iotid.cli.main`.
Not in scope: the device behaviour (``iotid.device.app``), making cards (the factory).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from iotid.cli.device import EXIT_REVOKED, FleetOption, open_se_at
from iotid.device import DeviceApp, DeviceConfig, DeviceStatus
from iotid.device.swarm import PhaseResult, Swarm

__all__ = ["swarm"]


def card_directories(root: Path) -> list[Path]:
    """Card state directories under ``root`` (a directory holding ``nvm.bin``), sorted."""
    return sorted(p.parent for p in root.rglob("nvm.bin") if not p.parent.name.endswith(".fleet"))


def swarm(
    cards: Annotated[
        Path, typer.Option("--cards", help="Directory holding card state directories.")
    ],
    fleet: FleetOption,
    gateway: Annotated[str, typer.Option("--gateway", help="Device gateway HOST:PORT.")],
    workers: Annotated[int, typer.Option(min=1, help="Threads of the swarm.")] = 16,
    cycles: Annotated[int, typer.Option(min=0, help="Cycles after boot.")] = 1,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many cards.")] = None,
) -> None:
    """Boot every card under --cards as a device (provision, enroll), then run --cycles cycles
    of telemetry, commands, firmware and scheduled rotation; report per phase."""
    out = Console(highlight=False)
    found = card_directories(cards)[:limit]
    if not found:
        out.print(f"[red]error:[/] no card state directories under {cards}")
        raise typer.Exit(2)
    apps = [
        DeviceApp(
            open_se_at(str(card)),
            fleet,
            gateway=gateway,
            state_dir=Path(str(card) + ".fleet"),
            config=DeviceConfig(telemetry_interval=0.0),
        )
        for card in found
    ]
    pool = Swarm(apps, workers=workers)
    results: list[PhaseResult] = []
    phases: list[tuple[str, Callable[[DeviceApp], object]]] = [("boot", DeviceApp.boot)]
    phases += [(f"cycle {n + 1}", _cycle) for n in range(cycles)]
    try:
        with Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out,
        ) as progress:
            for name, fn in phases:
                task = progress.add_task(name, total=len(apps))

                def done(_index: int, _ok: bool, task: TaskID = task) -> None:
                    progress.advance(task)

                results.append(pool.phase(name, fn, on_done=done))
    finally:
        for app in apps:
            app.close()
    table = Table(title=f"{len(apps)} devices, {workers} threads")
    for column in ("phase", "ok", "failed", "wall s", "per s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "phase" else "right")
    for r in results:
        table.add_row(
            r.name,
            str(r.ok),
            str(r.failed),
            f"{r.wall_seconds:.2f}",
            f"{r.rate:.1f}",
            f"{r.percentile(0.5) * 1000:.0f}",
            f"{r.percentile(0.99) * 1000:.0f}",
        )
    out.print(table)
    states = Counter(app.status for app in apps)
    out.print("states: " + ", ".join(f"{s.value} {n}" for s, n in sorted(states.items())))
    for r in results:
        for who, why in list(r.errors.items())[:5]:
            out.print(f"[yellow]{r.name}[/] {who}: {why}")
    if states.get(DeviceStatus.REVOKED):
        raise typer.Exit(EXIT_REVOKED)
    unwell = {DeviceStatus.FAILED, DeviceStatus.SE_UNAVAILABLE, DeviceStatus.FLEET_UNAVAILABLE}
    if any(r.failed for r in results) or unwell & set(states):
        raise typer.Exit(1)


def _cycle(app: DeviceApp) -> object:
    report = app.cycle()
    if not report.ok:
        raise RuntimeError(report.error or report.status.value)
    return report

"""The ``iotid`` command: sub-command groups and ``iotid demo``.

Scope: argument parsing and rendering only; the work is done by the library. ``iotid demo``
runs :func:`iotid.demo.run_demo` with one rich progress bar per phase (over the cards or the
devices), then prints the steps, the phase timings and rates, the revocation latency and one
device's trace down to the ceremony record; ``--json FILE`` writes the whole report. Exit status
1 when any step failed, 2 on bad arguments. While it runs, logging is kept to errors (no
per-device warnings, no server chatter; the levels are restored afterwards); secrets are never
printed.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
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

from iotid.cli.device import device_app
from iotid.cli.device_swarm import swarm
from iotid.cli.factory import factory_app
from iotid.cli.fleet import fleet_app
from iotid.cli.se import se_app
from iotid.demo import DemoEvent, DemoReport, EventKind, run_demo

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="iotid: hardware-backed identity for IoT fleets.",
)
app.add_typer(se_app, name="se")
device_app.command("swarm")(swarm)
app.add_typer(device_app, name="device")
app.add_typer(factory_app, name="factory")
app.add_typer(fleet_app, name="fleet")
console = Console()
err_console = Console(stderr=True)


def _mark(ok: bool) -> str:
    return "[green]ok[/green]" if ok else "[red]FAILED[/red]"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


#: Loggers the demo quiets while it runs: the simulated devices log every refused image and the
#: revoked device's last word on purpose (the report says all of it); the rest keeps its errors.
_QUIET = {"iotid.device": logging.CRITICAL, "iotid": logging.ERROR, "uvicorn": logging.ERROR}


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    saved = {name: logging.getLogger(name).level for name in _QUIET}
    try:
        for name, level in _QUIET.items():
            logging.getLogger(name).setLevel(level)
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@app.command()
def demo(
    devices: Annotated[
        int, typer.Option("--devices", min=2, help="Devices in the simulated fleet.")
    ] = 10,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Keep the demo's state here (default: a temporary directory)."),
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON to this file.")
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Devices working at the same time.")
    ] = 8,
) -> None:
    """The whole lifecycle over a simulated fleet: factory, fleet, N devices; then a report."""
    if directory is not None and directory.exists() and any(directory.iterdir()):
        err_console.print(
            f"[red]error:[/red] {directory} is not empty", highlight=False, soft_wrap=True
        )
        raise typer.Exit(2)
    console.print(
        f"[bold]iotid demo[/bold]: a 2-of-3 key ceremony, {devices} cards off the "
        "personalisation line, the fleet on SQLite and localhost, every device through "
        "enrollment, telemetry, firmware, rotation; one revoked."
    )
    with tempfile.TemporaryDirectory(prefix="iotid-demo-") as tmp:
        base = directory or Path(tmp)
        with _quiet_logging():
            report = _run_with_progress(base, devices, workers)
        if json_file is not None:
            json_file.write_text(report.to_json(), encoding="utf-8")
    _render(report, kept=directory is not None)
    if json_file is not None:
        console.print(f"report written to {json_file}", highlight=False)
    if not report.ok:
        console.print("[red]demo failed[/red]")
        raise typer.Exit(1)
    console.print("[green]demo passed[/green]")


def _run_with_progress(base: Path, devices: int, workers: int) -> DemoReport:
    with Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def on_event(event: DemoEvent) -> None:
            if event.kind is EventKind.PHASE:
                tasks[event.name] = progress.add_task(event.name, total=event.total)
            elif event.kind is EventKind.ADVANCE:
                progress.advance(tasks[event.name])
            else:
                mark = "[green]✓[/green]" if event.ok else "[red]✗[/red]"
                extra = "" if event.ok else f": {event.detail}"
                progress.console.print(f"{mark} {event.name}{extra}", highlight=False)

        return run_demo(base, devices=devices, on_event=on_event, workers=workers)


def _render(report: DemoReport, *, kept: bool) -> None:
    steps = Table(title=f"what happened ({report.devices} devices, {report.wall_seconds:.1f} s)")
    steps.add_column("step")
    steps.add_column("result")
    steps.add_column("s", justify="right")
    steps.add_column("detail")
    for step in report.steps:
        steps.add_row(step.name, _mark(step.ok), f"{step.seconds:.1f}", step.detail)
    console.print(steps)

    phases = Table(title="phases: time per device and rates")
    for header in ("phase", "ok", "failed", "wall s", "per device", "rate /s"):
        phases.add_column(header, justify="left" if header == "phase" else "right")
    for phase in report.phases:
        phases.add_row(
            phase.name,
            str(phase.ok),
            str(phase.failed),
            f"{phase.wall_seconds:.2f}",
            _ms(phase.per_device_mean),
            f"{phase.rate:,.1f}",
        )
    console.print(phases)
    if report.rates:
        console.print(
            "rates: " + ", ".join(f"{v:,.1f} {k}" for k, v in report.rates.items()),
            highlight=False,
        )

    revocation = report.revocation
    if revocation is not None:
        table = Table(title=f"revocation of {revocation.uid} (reported missing)")
        table.add_column("measure")
        table.add_column("value")
        table.add_row(
            "revoke call returned -> live connection cut", _ms(revocation.latency_seconds)
        )
        table.add_row(
            "fleet's recorded revocation time -> cut",
            _ms(revocation.fleet_recorded_latency_seconds),
        )
        table.add_row("new connection refused", _mark(revocation.new_connection_refused))
        table.add_row("OCSP", str(revocation.ocsp_status))
        table.add_row("CRL lists the certificate", _mark(revocation.crl_lists_serial))
        table.add_row("device application", str(revocation.app_status))
        console.print(table)

    trace = report.trace
    if trace is not None:
        table = Table(title=f"trace of {trace.uid} ({trace.state}, key epoch {trace.key_epoch})")
        table.add_column("link")
        table.add_column("")
        table.add_column("detail")
        for link in trace.links:
            table.add_row(link.name, _mark(link.ok), link.detail)
        console.print(table)
    where = report.directory if kept else "a temporary directory (removed)"
    console.print(f"state: {where}", highlight=False)


def main() -> None:  # pragma: no cover - console script entry
    app()

"""The ``iotid`` command: sub-command groups and ``iotid demo``.

Scope: argument parsing and rendering only; the work is done by the library.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from iotid.cli.device import device_app
from iotid.cli.factory import factory_app
from iotid.cli.fleet import fleet_app
from iotid.cli.se import se_app
from iotid.demo import NOT_YET_BUILT, TOTAL_STEPS, Step, run_demo

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="iotid: hardware-backed identity for IoT fleets.",
)
app.add_typer(se_app, name="se")
app.add_typer(device_app, name="device")
app.add_typer(factory_app, name="factory")
app.add_typer(fleet_app, name="fleet")
console = Console()


@app.command()
def demo(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Keep the demo's state here (default: a temporary directory)."),
    ] = None,
) -> None:
    """Run what iotid has built so far, end to end, and report."""
    console.print(
        "[bold]iotid demo[/bold] — built so far: the factory (ceremony, batch, personalisation "
        "line), the secure element and its five applets, the device side (host shim, mTLS, "
        "bootloader API) and the fleet's quote verifier."
    )
    with tempfile.TemporaryDirectory(prefix="iotid-demo-") as tmp:
        base = directory or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        ) as progress:
            task = progress.add_task("device lifecycle", total=TOTAL_STEPS)

            def advance(step: Step) -> None:
                progress.update(task, advance=1, description=step.name)

            report = run_demo(base, advance)
    table = Table(title=f"card {report.uid}")
    table.add_column("step")
    table.add_column("result")
    table.add_column("detail")
    for step in report.steps:
        table.add_row(
            step.name, "[green]ok[/green]" if step.ok else "[red]FAILED[/red]", step.detail
        )
    console.print(table)
    console.print("[yellow]Not built yet:[/yellow] " + "; ".join(NOT_YET_BUILT) + ".")
    if not report.ok:
        console.print("[red]demo failed[/red]")
        raise typer.Exit(1)
    console.print("[green]demo passed[/green]")


def main() -> None:  # pragma: no cover - console script entry
    app()

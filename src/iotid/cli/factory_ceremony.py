"""``iotid factory ceremony``: run the key ceremony and verify one.

Scope: argument parsing and rendering around :mod:`iotid.factory.ceremony`. ``init`` prints who
holds which share *file*, the root certificate's fingerprint and the record head, and never a
share's words (custodians read their own file). ``verify`` prints a summary table, or the reason
it failed (exit 1). Usage errors and failed ceremonies are one line on stderr, exit 2.
Not in scope: the ceremony itself, key store backends, batches (``iotid factory batch``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from iotid.factory.ceremony import (
    ROOT_CERT_FILE,
    SHARES_DIR,
    CeremonyError,
    init_ceremony,
)
from iotid.factory.ceremony_verify import verify_ceremony
from iotid.factory.keystore import KeyStoreError

ceremony_app = typer.Typer(
    no_args_is_help=True, help="The key ceremony: the issuance root CA under an M-of-N quorum."
)
console = Console()
err_console = Console(stderr=True)
_QUORUM = re.compile(r"(\d+)-of-(\d+)")


def _fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@ceremony_app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="The ceremony directory (new or empty).")],
    quorum: Annotated[
        str, typer.Option("--quorum", help="M-of-N: N custodians, any M unlock the root key.")
    ],
    hsm: Annotated[
        str | None,
        typer.Option("--hsm", help="PKCS#11 URI of the HSM token (default: software store)."),
    ] = None,
    hsm_pin: Annotated[
        str | None,
        typer.Option(
            "--hsm-pin",
            envvar="IOTID_HSM_PIN",
            help="The token's current user PIN (prompted for if not given; the ceremony "
            "replaces it by one only the quorum recovers).",
        ),
    ] = None,
    custodian: Annotated[
        list[str] | None,
        typer.Option("--custodian", help="A custodian's name (repeat N times, in share order)."),
    ] = None,
    operator: Annotated[
        str | None, typer.Option("--operator", help="Who runs the ceremony (default: $USER).")
    ] = None,
) -> None:
    """Create the issuance root CA key and certificate, one share file per custodian, and the
    hash-chained ceremony record."""
    match = _QUORUM.fullmatch(quorum.strip())
    if match is None:
        _fail(f"--quorum must look like 2-of-3, not {quorum!r}")
    threshold, count = int(match.group(1)), int(match.group(2))
    if hsm is not None and hsm_pin is None:
        hsm_pin = typer.prompt("current user PIN of the HSM token", hide_input=True)
    try:
        with console.status("running the ceremony (key store, shares, root key, certificate)"):
            result = init_ceremony(
                directory,
                threshold,
                count,
                custodian or None,
                hsm=hsm,
                hsm_pin=hsm_pin,
                operator=operator,
            )
    except (CeremonyError, KeyStoreError, OSError) as exc:
        _fail(str(exc))

    table = Table(title=f"ceremony {result.ceremony_id}: {threshold}-of-{count} shares")
    table.add_column("share", justify="right")
    table.add_column("custodian")
    table.add_column(f"file (in {directory})", overflow="fold")
    for share in result.share_files:
        table.add_row(
            str(share.index), share.custodian, share.path.relative_to(directory).as_posix()
        )
    console.print(table)
    for label, value in (
        ("key store", result.backend),
        ("root certificate", str(directory / ROOT_CERT_FILE)),
        ("root certificate SHA-256", result.root_fingerprint),
        ("root key fingerprint (SPKI SHA-256)", result.root_key_fingerprint),
        ("record head", result.record_head),
    ):
        console.print(f"{label}: {value}", soft_wrap=True, highlight=False)
    console.print(
        "[yellow]Each custodian takes their own share file away now; no share file may stay "
        f"in {directory / SHARES_DIR} or next to another share.[/yellow]"
    )


@ceremony_app.command()
def verify(
    directory: Annotated[Path, typer.Argument(help="The ceremony directory.")],
) -> None:
    """Check the record's hash chain and the root certificate's tie to it (exit 1 if not)."""
    try:
        report = verify_ceremony(directory)
    except CeremonyError as exc:
        err_console.print(f"[red]ceremony does NOT verify:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    table = Table(title=f"ceremony {report.ceremony_id}", show_header=False)
    table.add_column("item")
    table.add_column("value", overflow="fold")
    rows = [
        ("created", report.created),
        ("quorum", f"{report.threshold}-of-{report.count}"),
        ("custodians", ", ".join(report.custodians)),
        ("key store", report.backend),
        ("root subject", report.root_subject),
        ("root valid until", report.not_after),
        (
            "certificate names",
            f"record line {report.reference.seq + 1} ({report.reference.action})",
        ),
        ("record entries", str(report.entries)),
        ("steps after the root", str(report.later_steps)),
    ]
    for item, value in rows:
        table.add_row(item, value)
    console.print(table)
    for label, value in (
        ("root certificate SHA-256", report.root_fingerprint),
        ("root key fingerprint (SPKI SHA-256)", report.root_key_fingerprint),
        ("entry named by the root", report.reference.hash),
        ("record head", report.record_head),
    ):
        console.print(f"{label}: {value}", soft_wrap=True, highlight=False)
    console.print("[green]verified: record chain intact, root certificate tied to it[/green]")


__all__ = ["ceremony_app"]

"""``iotid factory batch create`` and ``iotid factory personalise``: batches and the line.

Scope: argument parsing, a rich progress bar for the line, one-line summaries; errors are one
line on stderr with exit status 2, never a traceback. Share words and line keys are never
printed. The work is :mod:`iotid.factory.batch` and :mod:`iotid.factory.line`.
Not in scope: the ceremony's commands, firmware signing (their own sub-apps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from iotid.apdu import ApduError
from iotid.factory.batch import BatchError, create_batch, parse_alg
from iotid.factory.ceremony import CeremonyError
from iotid.factory.keystore import KeyStoreError
from iotid.factory.line import LineError, personalise_batch, read_line_key
from iotid.factory.x509sign import X509SignError
from iotid.host.errors import HostError
from iotid.spec.manifest import ManifestError
from iotid.transport.base import TransportError

batch_app = typer.Typer(no_args_is_help=True, help="Batches: attestation CA, master keys.")
console = Console()
err_console = Console(stderr=True)

#: Every failure the library reports with a message fit for an operator (none carries a secret).
_EXPECTED = (
    BatchError,
    LineError,
    CeremonyError,
    KeyStoreError,
    ManifestError,
    X509SignError,
    HostError,
    ApduError,
    TransportError,
)


def _fail(message: str) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@batch_app.command("create")
def create(
    directory: Annotated[Path, typer.Argument(help="The ceremony directory.")],
    name: Annotated[str, typer.Option("--name", help="Batch name (letters, digits, . _ -).")],
    alg: Annotated[str, typer.Option("--alg", help="p256 | p384 | rsa2048 | rsa3072.")],
    shares: Annotated[
        list[Path], typer.Option("--shares", help="A custodian's share file (M of them).")
    ],
    rotation_authority: Annotated[
        Path | None,
        typer.Option(
            "--rotation-authority",
            help="The fleet's rotation authority public key (PEM; FLEET_DIR/rotation-authority.pem"
            " from `iotid fleet init`). Default: the factory store's own.",
        ),
    ] = None,
) -> None:
    """Create batch NAME: its attestation CA signed by the root (quorum present), master keys."""
    try:
        authority = None
        if rotation_authority is not None:
            loaded = serialization.load_pem_public_key(rotation_authority.read_bytes())
            if not isinstance(loaded, ec.EllipticCurvePublicKey):
                _fail(f"{rotation_authority}: not an EC public key")
            authority = loaded
        info = create_batch(directory, name, parse_alg(alg), shares, rotation_authority=authority)
    except _EXPECTED as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or 'file'}: {exc.strerror or exc}")
    except ValueError as exc:
        _fail(f"{rotation_authority}: {exc}")
    console.print(
        f"batch {info.name} ({alg}) created in {info.directory}: attestation CA "
        f"{info.fingerprints['ca_cert'][:16]}, line key in {info.line_key_path} (mode 0600)",
        highlight=False,
        soft_wrap=True,
    )


def personalise(
    directory: Annotated[Path, typer.Argument(help="The ceremony directory.")],
    batch: Annotated[str, typer.Option("--batch", help="The batch to personalise cards for.")],
    count: Annotated[int, typer.Option("--count", min=1, help="Number of cards.")],
    out: Annotated[Path, typer.Option("--out", help="Cards, journal and manifest go here.")],
    line_key: Annotated[
        Path | None,
        typer.Option("--line-key", help="Line key file (default: the batch's line.key)."),
    ] = None,
    rollback_floor: Annotated[
        int, typer.Option("--rollback-floor", min=0, max=0xFFFF_FFFF, help="Firmware floor.")
    ] = 0,
    durable: Annotated[
        bool, typer.Option("--durable", help="fsync every card write (survives an OS crash).")
    ] = False,
) -> None:
    """Personalise COUNT emulated cards of a batch (resumable), then sign the batch manifest."""
    try:
        key = None if line_key is None else read_line_key(line_key)
    except LineError as exc:
        _fail(str(exc))
    with Progress(
        TextColumn(f"batch {batch}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("cards", total=count)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            result = personalise_batch(
                directory,
                batch,
                count,
                out,
                line_key=key,
                rollback_floor=rollback_floor,
                progress=advance,
                durable=durable,
            )
        except _EXPECTED as exc:
            bar.stop()
            _fail(str(exc) or type(exc).__name__)
        except OSError as exc:
            bar.stop()
            _fail(f"{exc.filename or 'file'}: {exc.strerror or exc}")
    console.print(
        f"{result.count} cards of batch {result.batch}: {result.personalised} personalised, "
        f"{result.skipped} already done, {result.recovered} recovered, {result.scrapped} "
        f"scrapped; manifest {result.manifest_path} + {result.signature_path.name}",
        highlight=False,
        soft_wrap=True,
    )


__all__ = ["batch_app", "personalise"]

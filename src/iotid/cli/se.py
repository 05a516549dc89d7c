"""``iotid se``: create, inspect and serve emulated secure elements.

Scope: ``new``, ``info`` (public facts only) and ``serve --vpcd`` (the card as a virtual smart
card under pcscd). Never prints key material.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from iotid.se import Card, NvmError
from iotid.spec.gp import AppLifeCycle, CardLifeCycle
from iotid.transport.vpcd import parse_endpoint, serve_forever

se_app = typer.Typer(
    no_args_is_help=True, help="Emulated secure elements (a state directory each)."
)
console = Console()


def _open(state: Path) -> Card:
    try:
        return Card.open(state)
    except NvmError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _life_cycle_name(value: int, card: bool) -> str:
    enum = CardLifeCycle if card else AppLifeCycle
    try:
        return enum(value).name
    except ValueError:
        return f"0x{value:02X}"


@se_app.command()
def new(
    state: Annotated[Path, typer.Argument(help="State directory for the new card.")],
    uid: Annotated[str | None, typer.Option(help="UID, 10 bytes hex (default: random).")] = None,
) -> None:
    """Create a fresh card: OP_READY, GP test keys at KVN 0x30."""
    try:
        uid_bytes = bytes.fromhex(uid) if uid else None
        card = Card.create(state, uid=uid_bytes)
    except (ValueError, NvmError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"card {card.uid.hex().upper()} created in {state}")


@se_app.command()
def info(state: Annotated[Path, typer.Argument(help="Card state directory.")]) -> None:
    """Public facts: UID, life cycle, applications, key versions."""
    facts = _open(state).info()
    console.print(f"UID         {facts.uid.hex().upper()}")
    console.print(f"life cycle  {_life_cycle_name(facts.life_cycle, True)}")
    apps = Table(title="applications")
    apps.add_column("AID")
    apps.add_column("name")
    apps.add_column("life cycle")
    for aid, name, lc in facts.applications:
        apps.add_row(aid.hex().upper(), name, _life_cycle_name(lc, name == "IssuerSecurityDomain"))
    console.print(apps)
    keys = Table(title="ISD key sets (SCP03)")
    keys.add_column("KVN")
    keys.add_column("AES")
    keys.add_column("note")
    for kvn, length, test in facts.key_sets:
        keys.add_row(f"0x{kvn:02X}", f"{length * 8}-bit", "GP TEST KEYS" if test else "")
    console.print(keys)


@se_app.command()
def serve(
    state: Annotated[Path, typer.Argument(help="Card state directory.")],
    vpcd: Annotated[str, typer.Option(help="vpcd reader endpoint HOST:PORT.")] = "127.0.0.1:35963",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log connections.")] = False,
) -> None:
    """Serve the card to a vsmartcard vpcd reader, so pcscd and every PC/SC program see it."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    card = _open(state)
    try:
        host, port = parse_endpoint(vpcd)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(
        f"serving card {card.uid.hex().upper()} to vpcd at {host}:{port} (SIGTERM to stop)"
    )
    raise typer.Exit(serve_forever(card, host, port))

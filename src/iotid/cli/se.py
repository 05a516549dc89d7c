"""``iotid se``: create, inspect and serve emulated secure elements.

Scope: ``new``, ``info`` (public facts only) and ``serve --vpcd`` (the card as a virtual smart
card under pcscd). Never prints key material.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from rich.console import Console
from rich.table import Table

from iotid.apdu import ApduError
from iotid.connect import open_connection
from iotid.factory.devpki import DevPki, identity_alg
from iotid.host.errors import HostError
from iotid.host.personalisation import PersonalisationPlan
from iotid.host.personalisation import personalise as run_personalisation
from iotid.se import Card, NvmError
from iotid.spec.gp import AppLifeCycle, CardLifeCycle
from iotid.transport.vpcd import parse_endpoint, serve_forever

console = Console()
errors = Console(stderr=True)
se_app = typer.Typer(
    no_args_is_help=True, help="Emulated secure elements (a state directory each)."
)


def _open(state: Path) -> Card:
    try:
        return Card.open(state)
    except NvmError as exc:
        errors.print(f"[red]error:[/red] {exc}")
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
        errors.print(f"[red]error:[/red] {exc}")
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
def personalise(
    state: Annotated[Path, typer.Argument(help="Card state directory (a fresh card).")],
    dev: Annotated[
        bool, typer.Option("--dev", help="Use a development PKI (required today).")
    ] = False,
    dev_pki: Annotated[
        Path | None, typer.Option("--dev-pki", help="Development PKI directory.")
    ] = None,
    alg: Annotated[str, typer.Option(help="p256, p384, rsa2048 or rsa3072.")] = "p256",
    firmware_key: Annotated[
        list[Path] | None,
        typer.Option("--firmware-key", help="Firmware issuance public key (PEM)."),
    ] = None,
    rollback_floor: Annotated[int, typer.Option(help="Initial anti-rollback floor.")] = 0,
) -> None:
    """Personalise a card over SCP03: applets, attestation chain, new ISD keys, SECURED."""
    if not dev or dev_pki is None:
        errors.print(
            "[red]error:[/red] only --dev --dev-pki DIR exists today "
            "(the factory ceremony comes next)"
        )
        raise typer.Exit(2)
    err = Console(stderr=True)
    err.print(
        "[bold red]DEVELOPMENT PERSONALISATION[/bold red]: keys come from an unprotected "
        "development "
        f"PKI in {dev_pki}; never ship such a card."
    )
    try:
        identity = identity_alg(alg)
        pki = DevPki.load_or_create(dev_pki)
        fw_keys = [serialization.load_pem_public_key(p.read_bytes()) for p in firmware_key or []]
        if not fw_keys:
            fw_keys = [pki.firmware_key.public_key()]
        plan = PersonalisationPlan(
            alg=identity,
            master_key=pki.master_key,
            operator_rekey_key=pki.operator_key.public_key(),
            certify=lambda public, uid: (pki.certify_attestation_key(public, uid), pki.batch_cert),
            firmware_keys=tuple(fw_keys),  # type: ignore[arg-type]
            rotation_authority=pki.rotation_key.public_key(),
            rollback_floor=rollback_floor,
        )
        result = run_personalisation(open_connection(state), plan, isd_keys_for=pki.isd_keys)
    except (ValueError, OSError, HostError, ApduError, NvmError) as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"card {result.uid.hex().upper()} personalised ({identity.name}), SECURED")
    console.print(
        f"attestation certificate: {result.attestation_certificate.subject.rfc4514_string()}"
    )
    console.print(f"trust anchor: {dev_pki / 'root.pem'}")


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
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(
        f"serving card {card.uid.hex().upper()} to vpcd at {host}:{port} (SIGTERM to stop)"
    )
    raise typer.Exit(serve_forever(card, host, port))

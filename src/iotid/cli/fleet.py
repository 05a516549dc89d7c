"""``iotid fleet``: set up, run and inspect the fleet platform.

Scope: argument parsing, one-line summaries and tables. ``init`` makes the fleet's keys (the
issuing CA certified by the ceremony's root with the quorum present, the gateway certificate,
the rotation authority), the root's CRL, ``fleet.json`` and the migrated database; ``serve``
runs the operator API and the device gateway (``iotid.fleet.runtime``); ``token create``,
``audit verify`` and ``trace`` are the operator's tools. Errors are one line on stderr with
exit status 2, never a traceback; secrets (token secrets are shown once, on stdout, by
``token create``) never reach logs.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from iotid.factory import ceremony
from iotid.factory.batch import BatchError
from iotid.factory.ceremony import CeremonyError
from iotid.factory.fleetca import certify_fleet_ca, issue_root_crl
from iotid.factory.keystore import KeyStoreError
from iotid.factory.x509sign import X509SignError
from iotid.fleet.audit.service import AuditService
from iotid.fleet.audit.trace import Trace
from iotid.fleet.auth import Role, create_token
from iotid.fleet.config import FleetConfig, FleetConfigError, parse_hostport
from iotid.fleet.db import Database
from iotid.fleet.errors import DomainError
from iotid.fleet.issuing import FleetKeys, FleetKeysError, create_fleet_keys
from iotid.fleet.models import AuditChainError, AuditLog
from iotid.fleet.runtime import serve

fleet_app = typer.Typer(no_args_is_help=True, help="The fleet platform: API, gateway, registry.")
token_app = typer.Typer(no_args_is_help=True, help="Operator API tokens.")
audit_app = typer.Typer(no_args_is_help=True, help="The fleet's audit log.")
fleet_app.add_typer(token_app, name="token")
fleet_app.add_typer(audit_app, name="audit")
console = Console()
err_console = Console(stderr=True)

PASSPHRASE_ENV = "IOTID_FLEET_KEY_PASSPHRASE"  # noqa: S105 (the variable's name, not a secret)
_EXPECTED = (
    FleetConfigError,
    FleetKeysError,
    BatchError,
    CeremonyError,
    KeyStoreError,
    X509SignError,
    SQLAlchemyError,
)

DirOption = Annotated[
    Path, typer.Option("--dir", help="The fleet directory (keys and fleet.json).")
]
DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: fleet.json's, else SQLite in --dir)."),
]
CeremonyRecordOption = Annotated[
    Path | None,
    typer.Option(
        "--ceremony-record",
        help="A copy of the ceremony record (default: fleet.json's, set by `fleet init`).",
    ),
]


def _fail(message: str) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode("utf-8") if value else None


def _config(directory: Path, db: str | None) -> FleetConfig:
    try:
        return FleetConfig.load(directory).with_overrides(db_url=db)
    except FleetConfigError as exc:
        _fail(str(exc))


@fleet_app.command("init")
def init(
    directory: DirOption,
    factory: Annotated[Path, typer.Option("--factory", help="The ceremony directory.")],
    shares: Annotated[
        list[Path], typer.Option("--shares", help="A custodian's share file (M of them).")
    ],
    db: DbOption = None,
    api: Annotated[str, typer.Option("--api", help="Operator API HOST:PORT.")] = "127.0.0.1:8080",
    gateway: Annotated[
        str, typer.Option("--gateway", help="Device gateway HOST:PORT.")
    ] = "127.0.0.1:8443",
    names: Annotated[
        list[str] | None,
        typer.Option("--name", help="DNS name or IP of the gateway certificate (repeatable)."),
    ] = None,
    public_url: Annotated[
        str | None, typer.Option("--public-url", help="The API's URL as devices reach it.")
    ] = None,
) -> None:
    """Create the fleet: keys certified by the root (quorum present), root CRL, database."""
    try:
        api_host, api_port = parse_hostport(api)
        gw_host, gw_port = parse_hostport(gateway)
        root = ceremony.root_certificate(factory)
        keys = create_fleet_keys(
            directory,
            root,
            lambda csr: certify_fleet_ca(factory, csr, shares),
            gateway_names=names or ["localhost", "127.0.0.1"],
            passphrase=_passphrase(),
            root_crl=issue_root_crl(factory, shares),
        )
        config = FleetConfig(
            directory,
            db or FleetConfig.default_db_url(directory),
            api_host,
            api_port,
            gw_host,
            gw_port,
            public_url,
            ceremony_record=(factory / ceremony.RECORD_FILE).resolve(),
        )
        config.save()
        database = Database(config.db_url)
        try:
            database.upgrade()
        finally:
            database.dispose()
    except _EXPECTED as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or 'file'}: {exc.strerror or exc}")
    console.print(
        f"fleet ready in {directory}: issuing CA {keys.issuing.sha256[:16]} under root "
        f"{root.subject.rfc4514_string()}; database {config!r}.\n"
        f"Create batches for this fleet with "
        f"--rotation-authority {directory / 'rotation-authority.pem'}",
        highlight=False,
        soft_wrap=True,
    )


@token_app.command("create")
def token_create(
    directory: DirOption,
    role: Annotated[str, typer.Option("--role", help="admin | operator | auditor.")],
    days: Annotated[int, typer.Option("--days", help="Lifetime in days.", min=1)] = 30,
    db: DbOption = None,
) -> None:
    """Create an API token; its secret is printed once (only its SHA-256 is stored)."""
    config = _config(directory, db)
    try:
        wanted = Role(role)
    except ValueError:
        _fail(f"unknown role {role!r}: admin, operator or auditor")
    database = Database(config.db_url)
    try:
        token = create_token(database, wanted, dt.timedelta(days=days))
    except _EXPECTED as exc:
        _fail(str(exc))
    finally:
        database.dispose()
    err_console.print(
        f"token {token.token_id} ({token.role.value}) valid until "
        f"{token.expires_at:%Y-%m-%d %H:%M}Z; the secret below is shown once:",
        highlight=False,
    )
    print(token.secret)


@audit_app.command("verify")
def audit_verify(directory: DirOption, db: DbOption = None) -> None:
    """Check the audit log's hash chain from the first entry to the head."""
    config = _config(directory, db)
    database = Database(config.db_url)
    try:
        with database.transaction(write=False) as session:
            head = AuditLog(session).verify()
    except AuditChainError as exc:
        _fail(f"audit log TAMPERED: {exc}")
    except _EXPECTED as exc:
        _fail(str(exc))
    finally:
        database.dispose()
    if head is None:
        console.print("audit log empty")
        return
    table = Table(title="audit log intact")
    table.add_column("entries")
    table.add_column("head hash")
    table.add_row(str(head.seq), head.hash)
    console.print(table)


@fleet_app.command("serve")
def serve_command(
    directory: DirOption,
    db: DbOption = None,
    api: Annotated[
        str | None, typer.Option("--api", help="Operator API HOST:PORT (default: fleet.json's).")
    ] = None,
    gateway: Annotated[
        str | None,
        typer.Option("--gateway", help="Device gateway HOST:PORT (default: fleet.json's)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Worker processes (SO_REUSEPORT).")
    ] = None,
    ceremony_record: CeremonyRecordOption = None,
) -> None:
    """Run the operator API and the device gateway until SIGTERM/SIGINT."""
    config = _config(directory, db).with_overrides(ceremony_record=ceremony_record)
    try:
        if api is not None:
            host, port = parse_hostport(api)
            config = config.with_overrides(api_host=host, api_port=port)
        if gateway is not None:
            host, port = parse_hostport(gateway)
            config = config.with_overrides(gateway_host=host, gateway_port=port)
        count = workers or config.workers
        err_console.print(
            f"fleet: API {config.api_host}:{config.api_port}, gateway "
            f"{config.gateway_host}:{config.gateway_port}, {count} worker(s), {config!r}",
            highlight=False,
        )
        serve(config, workers=count, passphrase=_passphrase())
    except (*_EXPECTED, ValueError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen: {exc.strerror or exc}")


@fleet_app.command("trace")
def trace_command(
    directory: DirOption,
    uid: Annotated[str, typer.Argument(help="The device UID (hex).")],
    db: DbOption = None,
    ceremony_record: CeremonyRecordOption = None,
) -> None:
    """Walk a device: certificate -> attestation chain -> batch CA -> root -> ceremony record."""
    config = _config(directory, db)
    database = Database(config.db_url)
    try:
        keys = FleetKeys.load(directory, passphrase=_passphrase())
        record = ceremony_record or config.ceremony_record
        trace = AuditService(database, keys, ceremony_record=record).trace(uid)
    except DomainError as exc:
        _fail(exc.message)
    except _EXPECTED as exc:
        _fail(str(exc))
    finally:
        database.dispose()
    console.print(render_trace(trace))
    if not trace.ok:
        raise typer.Exit(1)


def render_trace(trace: Trace) -> Table:
    """The trace as a table: one row per link, top (certificate) to bottom (ceremony)."""

    def mark(ok: bool) -> str:
        return "[green]ok[/green]" if ok else "[red]BROKEN[/red]"

    table = Table(title=f"device {trace.uid} ({trace.state}, key epoch {trace.key_epoch})")
    table.add_column("link")
    table.add_column("")
    table.add_column("detail")
    for cert in trace.certificates:
        state = (
            f"revoked {cert.reason}"
            if cert.revoked_at
            else f"until {cert.not_after:%Y-%m-%d %H:%M}Z"
        )
        table.add_row(
            f"certificate {cert.serial[:16]}",
            mark(cert.ok),
            f"epoch {cert.key_epoch}, {state}" + (f"; {cert.problem}" if cert.problem else ""),
        )
    for enrollment in trace.enrollments:
        table.add_row(
            "attestation",
            mark(enrollment.ok),
            f"{enrollment.attestation_subject} sha256 {str(enrollment.attestation_sha256)[:16]}"
            + (f"; {enrollment.problem}" if enrollment.problem else ""),
        )
    batch = trace.batch
    table.add_row(
        f"batch CA ({batch.name})",
        mark(batch.ok),
        f"{batch.batch_ca_subject} sha256 {batch.batch_ca_sha256[:16]}"
        + (f"; revoked {batch.revocation_reason}" if batch.revoked_at else "")
        + (f"; {batch.problem}" if batch.problem else ""),
    )
    root = trace.root
    table.add_row(
        "issuance root",
        mark(root.ok),
        f"{root.subject} sha256 {root.sha256[:16]}" + (f"; {root.problem}" if root.problem else ""),
    )
    ceremony = trace.ceremony
    if ceremony.verified:
        detail = (
            f"entry {ceremony.entry_seq} ({ceremony.entry_action}, {ceremony.entry_time}); "
            f"quorum {ceremony.threshold}-of-{ceremony.count}, present: "
            + ", ".join(ceremony.custodians_present)
        )
    else:
        detail = f"record entry {str(ceremony.reference)[:16]} (no record copy given: not verified)"
    table.add_row(
        "ceremony record",
        mark(ceremony.ok),
        detail + (f"; {ceremony.problem}" if ceremony.problem else ""),
    )
    table.add_row("audit entries", "", str(len(trace.audit)))
    return table

"""``iotid factory firmware sign``: sign firmware with a key held in the factory key store.

Scope: argument parsing; opening the ceremony's key store (``factory.stores.open_store``) and
unlocking it with M custodian share files (quorum tier) or a batch's ``line.key`` (operational
tier); calling :mod:`iotid.factory.firmware`; appending a ``firmware.signed`` step (public facts:
key, fingerprint, version, counter, image hash) to the ceremony record when DIR holds one; writing
the outputs atomically; a one-line summary. Errors are one line on stderr, exit 2, no traceback.
Share words and line keys are never printed.

Not covered: the image format and signing (:mod:`iotid.factory.firmware`), the store backends,
verification (``iotid device verify-firmware``, the card).
"""

from __future__ import annotations

import getpass
import os
import tempfile
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from iotid.factory import ceremony
from iotid.factory.batch import FIRMWARE_KEY
from iotid.factory.ceremony import CeremonyError
from iotid.factory.firmware import SignedImage, SignedRaw, sign_mcuboot_detailed, sign_raw_detailed
from iotid.factory.keystore import KeyStoreError, Signer, fingerprint
from iotid.factory.line import LineError, read_line_key
from iotid.factory.shares import read_share_file
from iotid.factory.stores import open_store
from iotid.spec.firmware import ImageVersion

firmware_app = typer.Typer(
    no_args_is_help=True, help="Firmware signing with a key from the factory key store."
)
console = Console()
err_console = Console(stderr=True)

SIGNED_STEP = "firmware.signed"


@firmware_app.callback()
def _group() -> None:
    """Firmware signing with a key from the factory key store."""
    # A callback keeps ``sign`` a sub-command even while it is the only one.


def _fail(message: str) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _int(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        _fail(f"{what} is not an integer: {text!r}")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _signer(factory: Path, key: str, shares: list[Path], line_key: Path | None) -> Signer:
    store = open_store(factory)
    if shares:
        store.unlock_quorum([read_share_file(p) for p in shares])
    if line_key is not None:
        store.unlock_operational(read_line_key(line_key))
    return store.signer(key)  # LockedError names what is missing


def _actors(shares: list[Path]) -> list[str]:
    if shares:  # the custodians present: share files are named <custodian>.share
        return [p.stem for p in shares]
    try:
        return [getpass.getuser()]
    except (KeyError, OSError):
        return ["operator"]


@firmware_app.command()
def sign(
    image: Annotated[Path, typer.Argument(help="The raw firmware (the body, no header).")],
    out: Annotated[
        Path, typer.Argument(help="Output: the MCUboot image (with --detached: a raw copy).")
    ],
    factory: Annotated[Path, typer.Option("--factory", help="The ceremony (factory) directory.")],
    version: Annotated[str, typer.Option("--version", help="X.Y.Z or X.Y.Z+BUILD.")],
    security_counter: Annotated[
        int,
        typer.Option("--security-counter", min=0, max=0xFFFF_FFFF, help="Anti-rollback counter."),
    ],
    key: Annotated[
        str,
        typer.Option(
            "--key",
            help="The signing key's name in the store (default: the one batch create makes).",
        ),
    ] = FIRMWARE_KEY,
    detached: Annotated[
        Path | None,
        typer.Option("--detached", help="Raw mode: write the detached signature file here."),
    ] = None,
    shares: Annotated[
        list[Path] | None,
        typer.Option("--shares", help="A custodian's share file (repeat, M of them): quorum."),
    ] = None,
    line_key: Annotated[
        Path | None, typer.Option("--line-key", help="A batch's line.key file: operational tier.")
    ] = None,
    header_size: Annotated[str, typer.Option(help="MCUboot header size.")] = "0x200",
    load_address: Annotated[str, typer.Option(help="Load address (RAM load when not 0).")] = "0",
    slot_size: Annotated[
        str | None, typer.Option(help="Refuse unless image + swap trailer fit this slot.")
    ] = None,
    align: Annotated[int, typer.Option(help="Flash write alignment (trailer size).")] = 8,
) -> None:
    """Sign IMAGE into OUT: an MCUboot image that `imgtool verify` and the card accept, or with
    --detached SIG a copy of IMAGE and its detached signature file."""
    try:
        parsed_version = ImageVersion.parse(version)
    except ValueError as exc:
        _fail(str(exc))
    hdr = _int(header_size, "--header-size")
    load = _int(load_address, "--load-address")
    slot = None if slot_size is None else _int(slot_size, "--slot-size")
    share_files = shares or []
    if detached is not None and detached.resolve() == out.resolve():
        _fail("--detached must name another file than OUT")
    for target in (out, detached):  # before signing and recording: nothing half-done
        if target is not None and not target.resolve().parent.is_dir():
            _fail(f"{target}: its directory does not exist")
    try:
        body = image.read_bytes()
        signer = _signer(factory, key, share_files, line_key)
        signed: SignedImage | SignedRaw
        if detached is None:
            signed = sign_mcuboot_detailed(
                body,
                signer,
                version=parsed_version,
                security_counter=security_counter,
                header_size=hdr,
                load_address=load,
                slot_size=slot,
                align=align,
            )
        else:
            signed = sign_raw_detailed(
                body, signer, version=parsed_version, security_counter=security_counter
            )
        key_print = fingerprint(signer.public_key())
        if (factory / ceremony.RECORD_FILE).exists():  # the audit trail, before any output
            details = {"key": key, "key_fingerprint": key_print, **signed.audit_details()}
            ceremony.append_step(factory, SIGNED_STEP, details, _actors(share_files))
        if isinstance(signed, SignedImage):
            _write_atomic(out, signed.image)
        elif detached is not None:
            _write_atomic(detached, signed.signature_file)
            _write_atomic(out, body)
    except (KeyStoreError, CeremonyError, LineError) as exc:  # messages carry no secret
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or 'file'}: {exc.strerror or exc}")
    except ValueError as exc:  # FirmwareSigningError, bad parameters
        _fail(str(exc))
    what = "MCUboot image" if detached is None else f"raw image + signature {detached}"
    console.print(
        f"signed {out} ({what}): version {parsed_version}, security counter {security_counter}, "
        f"key {key} ({key_print[:16]}), {signed.hash_alg.name} {signed.image_hash.hex()}",
        highlight=False,
        soft_wrap=True,
    )


__all__ = ["firmware_app"]

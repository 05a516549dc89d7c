"""``iotid device``: what the host MCU does with its secure element, from a shell.

Scope: thin wrappers over the host shim's sessions; SE is a card state directory or
``pcsc:READER``. Outputs are scriptable (PEM, JSON, files); errors are one line on stderr with
exit status 2 (``verify-firmware``: 0 valid, 1 invalid, 2 error). Never prints key material.
``iotid device run`` runs the device application (``iotid.device.app``) until Ctrl-C, one line
per cycle: exit 0 on a clean stop, 3 when the fleet revoked the device, 1 when it failed.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotid.apdu import ApduError
from iotid.connect import TargetError, open_connection
from iotid.device import DeviceApp, DeviceConfig, DeviceState, DeviceStatus, FleetClient, FleetError
from iotid.host.errors import HostError
from iotid.host.secureelement import SecureElement
from iotid.host.tls import connect
from iotid.transport.base import CardRemovedError, TransportError

device_app = typer.Typer(
    no_args_is_help=True, help="The device side: provision, attest, mTLS, firmware, rotation."
)
SeOption = Annotated[str, typer.Option("--se", help="Card state directory or pcsc:READER.")]
_ERRORS = (ApduError, HostError, TransportError, TargetError, FleetError, ValueError, OSError)
FleetOption = Annotated[
    str, typer.Option("--fleet", help="Fleet operator API base URL, e.g. http://127.0.0.1:8080.")
]
StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Device state directory (gateway CA, gateway address; never keys). "
        "Default: <SE>.fleet next to a card directory.",
    ),
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _se(target: str) -> Iterator[SecureElement]:
    try:
        se = SecureElement(open_connection(target))
    except _ERRORS as exc:
        raise _fail(str(exc)) from None
    try:
        yield se
    except _ERRORS as exc:
        raise _fail(str(exc)) from None
    finally:
        se.close()


def _pem(key: object) -> str:
    assert hasattr(key, "public_bytes")  # noqa: S101 - public keys only
    der: bytes = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der.decode()


@device_app.command()
def provision(se: SeOption) -> None:
    """First boot: derive the identity key inside the SE; prints its public key (PEM)."""
    with _se(se) as s:
        typer.echo(_pem(s.provisioning.provision()), nl=False)


@device_app.command()
def pubkey(se: SeOption) -> None:
    """The active identity public key (PEM)."""
    with _se(se) as s:
        typer.echo(s.provisioning.public_key().pem(), nl=False)


@device_app.command()
def attest(
    se: SeOption,
    nonce: Annotated[str, typer.Option(help="Verifier nonce, hex (8-64 bytes).")],
    out: Annotated[Path, typer.Option(help="Where to write the quote (COSE_Sign1, CBOR).")],
) -> None:
    """A signed quote (EAT in COSE_Sign1) over UID, identity key and the nonce."""
    try:
        raw_nonce = bytes.fromhex(nonce)
    except ValueError:
        raise _fail("--nonce must be hex") from None
    with _se(se) as s:
        quote = s.attestation.attest(raw_nonce)
    out.write_bytes(quote)
    typer.echo(f"quote: {len(quote)} bytes -> {out}")


@device_app.command()
def csr(
    se: SeOption,
    out: Annotated[Path, typer.Option(help="Where to write the PKCS#10 request (PEM).")],
    cn: Annotated[str | None, typer.Option(help="Subject common name (default: the UID).")] = None,
) -> None:
    """A PKCS#10 request for the identity key, signed inside the SE."""
    with _se(se) as s:
        request = s.mtls.create_csr(cn)
    out.write_bytes(request.public_bytes(serialization.Encoding.PEM))
    typer.echo(f"CSR -> {out}")


@device_app.command("install-cert")
def install_cert(
    se: SeOption,
    cert: Annotated[Path, typer.Argument(help="The client certificate (PEM).")],
    chain: Annotated[
        Path | None, typer.Option(help="Intermediate certificates (PEM), leaf's issuer first.")
    ] = None,
) -> None:
    """Store the client certificate chain for the current identity key."""
    try:
        certs = [x509.load_pem_x509_certificate(cert.read_bytes())]
        if chain is not None:
            certs += x509.load_pem_x509_certificates(chain.read_bytes())
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read certificates: {exc}") from None
    with _se(se) as s:
        s.mtls.install_chain(certs)
    typer.echo(f"installed a chain of {len(certs)} certificate(s)")


@device_app.command("tls-connect")
def tls_connect(
    se: SeOption,
    host: Annotated[str, typer.Option(help="Server host.")],
    port: Annotated[int, typer.Option(help="Server port.")],
    ca: Annotated[
        Path, typer.Option(help="CA certificate(s) the server's chain must lead to (PEM).")
    ],
    send: Annotated[str | None, typer.Option(help="Text to send after the handshake.")] = None,
    tls: Annotated[str, typer.Option(help="Versions: 1.3, 1.2 or both.")] = "both",
) -> None:
    """Mutual TLS with the key in the SE; prints the server's answer."""
    versions = {"1.3": ("TLS1.3",), "1.2": ("TLS1.2",), "both": ("TLS1.3", "TLS1.2")}.get(tls)
    if versions is None:
        raise _fail("--tls is 1.3, 1.2 or both")
    try:
        anchors = x509.load_pem_x509_certificates(ca.read_bytes())
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read --ca: {exc}") from None
    with _se(se) as s:
        credential = s.credential()
        if credential is None:
            raise _fail("no credential available in the SE (install a certificate first)")
        client = connect(
            host, port, credential.signer, credential.chain, anchors, versions=versions
        )
        try:
            typer.echo(f"connected: {client.version}, {client.cipher}", err=True)
            if send is not None:
                client.send(send.encode())
            answer = client.read_all()
        finally:
            client.close()
    sys.stdout.write(answer.decode(errors="replace"))


@device_app.command("verify-firmware")
def verify_firmware(
    se: SeOption,
    image: Annotated[Path, typer.Argument(help="MCUboot image, or raw image with --signature.")],
    signature: Annotated[
        Path | None, typer.Option(help="Detached signature (raw image mode).")
    ] = None,
) -> None:
    """Stream an update through the SE; exit 0 valid, 1 invalid, 2 error; JSON verdict on stdout."""
    try:
        sig = signature.read_bytes() if signature else None
        with image.open("rb"):
            pass
    except OSError as exc:
        raise _fail(str(exc)) from None
    try:
        se_obj = SecureElement(open_connection(se))
    except _ERRORS as exc:
        typer.echo(json.dumps({"valid": False, "reason": f"error: {exc}"}))
        raise typer.Exit(2) from None
    try:
        verdict = se_obj.verify_firmware(image, signature=sig)
    finally:
        se_obj.close()
    typer.echo(json.dumps(verdict.as_dict()))
    if verdict.valid:
        return
    raise typer.Exit(2 if verdict.reason.startswith("error") else 1)


@device_app.command("confirm-firmware")
def confirm_firmware(se: SeOption) -> None:
    """After the new firmware booted: raise the anti-rollback floor to its security counter."""
    with _se(se) as s:
        floor = s.firmware.confirm()
    typer.echo(f"anti-rollback floor: {floor}")


@device_app.command()
def rotate(
    se: SeOption,
    nonce: Annotated[str, typer.Option(help="The fleet's nonce, hex (16-64 bytes).")],
) -> None:
    """Start a rotation: new key on the SE, proof of continuity signed by the current key (JSON)."""
    with _se(se) as s:
        proof = s.rotation.rotate(_hex(nonce, "--nonce"))
    typer.echo(
        json.dumps(
            {
                "epoch": proof.epoch,
                "public_key_pem": _pem(proof.public_key),
                "signature": proof.signature.hex(),
                "nonce": proof.nonce.hex(),
            }
        )
    )


@device_app.command()
def commit(
    se: SeOption,
    ack: Annotated[str, typer.Option(help="The fleet's acknowledgement signature, hex.")],
) -> None:
    """Commit a pending rotation with the fleet's acknowledgement; the old key is retired."""
    with _se(se) as s:
        epoch = s.rotation.commit(_hex(ack, "--ack"))
    typer.echo(f"identity key epoch {epoch} active")


@device_app.command()
def decrypt(
    se: SeOption,
    epoch: Annotated[int, typer.Option(help="Retired key epoch.")],
    blob: Annotated[
        Path, typer.Argument(help="Ciphertext encrypted to that key (ECIES / RSA-OAEP hybrid).")
    ],
    out: Annotated[Path, typer.Option(help="Where to write the plaintext.")],
) -> None:
    """Forensic decryption with a retired identity key (decrypt-only until its retention ends)."""
    data = _read(blob)
    with _se(se) as s:
        plain = s.rotation.decrypt(epoch, data)
    out.write_bytes(plain)
    typer.echo(f"{len(plain)} bytes -> {out}")


@device_app.command()
def status(se: SeOption) -> None:
    """Provisioning and rotation state (public facts), as JSON."""
    with _se(se) as s:
        p = s.provisioning.state()
        r = s.rotation.state()
    typer.echo(
        json.dumps(
            {
                "uid": p.uid.hex().upper() if p.uid else None,
                "provisioned": p.provisioned,
                "epoch": p.epoch,
                "algorithm": p.alg.name if p.alg else None,
                "pending_rotation": r.pending,
                "retired_epochs": list(r.retired_epochs),
            }
        )
    )


def _state_dir(se: str, state_dir: Path | None) -> Path:
    if state_dir is not None:
        return state_dir
    if se.startswith("pcsc:"):
        raise _fail("--state-dir is required with a pcsc: reader")
    return Path(se.rstrip("/") + ".fleet")


@device_app.command()
def enroll(
    se: SeOption,
    fleet: FleetOption,
    state_dir: StateDirOption = None,
    gateway: Annotated[
        str | None, typer.Option(help="Device gateway HOST:PORT, remembered for later.")
    ] = None,
    ca: Annotated[
        Path | None, typer.Option(help="CA bundle (PEM) for an https:// fleet URL.")
    ] = None,
) -> None:
    """Enroll with the fleet: quote from the SE, certificate installed on the SE."""
    from rich.console import Console  # noqa: PLC0415 - only this command prints with rich

    ca_pem = _read(ca) if ca is not None else None
    directory = _state_dir(se, state_dir)
    with (
        _se(se) as s,
        FleetClient(s, fleet, gateway=gateway, ca_pem=ca_pem, state_dir=directory) as client,
    ):
        info = client.enroll()
    out = Console()
    out.print(f"[bold green]enrolled[/] [bold]{info.uid}[/]")
    out.print(f"  epoch      {info.epoch}")
    out.print(f"  serial     {info.serial}")
    out.print(f"  not after  {info.not_after}")
    out.print(f"  state      {directory}")


@device_app.command()
def telemetry(
    se: SeOption,
    fleet: FleetOption,
    data: Annotated[str, typer.Option(help="The reading, JSON (sent as its UTF-8 bytes).")],
    gateway: Annotated[
        str | None, typer.Option(help="Device gateway HOST:PORT (default: the remembered one).")
    ] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Send one signed telemetry reading through the gateway (mutual TLS, key in the SE)."""
    try:
        payload = json.dumps(json.loads(data), separators=(",", ":")).encode()
    except ValueError:
        raise _fail("--data must be JSON") from None
    directory = _state_dir(se, state_dir)
    with (
        _se(se) as s,
        FleetClient(s, fleet, gateway=gateway, state_dir=directory) as client,
        client.gateway() as gw,
    ):
        reading = gw.send_telemetry(payload)
    typer.echo(json.dumps({"id": reading}))


#: ``iotid device run`` exit status when the fleet revoked the device.
EXIT_REVOKED = 3


def open_se_at(target: str) -> Callable[[], SecureElement]:
    """``open_se`` for the device application: a card directory that is gone, or a reader
    without a card, is a removed SE (the application retries with backoff)."""

    def open_se() -> SecureElement:
        try:
            return SecureElement(open_connection(target))
        except TargetError as exc:
            raise CardRemovedError(str(exc)) from None

    return open_se


@device_app.command()
def run(
    se: SeOption,
    fleet: FleetOption,
    gateway: Annotated[
        str | None, typer.Option(help="Device gateway HOST:PORT (default: the remembered one).")
    ] = None,
    state_dir: StateDirOption = None,
    ca: Annotated[
        Path | None, typer.Option(help="CA bundle (PEM) for an https:// fleet URL.")
    ] = None,
    interval: Annotated[
        float, typer.Option(min=0.0, help="Seconds between cycles (telemetry interval).")
    ] = 5.0,
    cycles: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many cycles (default: run on).")
    ] = None,
) -> None:
    """Run the device application: boot (provision, enroll), then telemetry, commands,
    firmware and scheduled rotation every INTERVAL seconds, until Ctrl-C. Exit 0 on a clean
    stop, 3 when the fleet revoked the device, 1 when it failed."""
    from rich.console import Console  # noqa: PLC0415 - only the printing commands need rich

    ca_pem = _read(ca) if ca is not None else None
    directory = _state_dir(se, state_dir)
    address = gateway or DeviceState(directory).gateway
    if address is None:
        raise _fail("--gateway HOST:PORT is required on the first run")
    if not se.startswith("pcsc:"):
        try:
            open_connection(se).close()
        except _ERRORS as exc:
            raise _fail(str(exc)) from None
    out = Console(highlight=False)
    try:
        app = DeviceApp(
            open_se_at(se),
            fleet,
            gateway=address,
            state_dir=directory,
            ca_pem=ca_pem,
            config=DeviceConfig(telemetry_interval=interval),
        )
    except _ERRORS as exc:
        raise _fail(str(exc)) from None
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda _s, _f: stop.set())
    style = {True: "green", False: "yellow"}
    try:
        summary = app.run(
            stop,
            cycles=cycles,
            on_cycle=lambda r: out.print(f"[{style[r.ok]}]{r.line()}[/]", markup=True),
        )
    finally:
        app.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    out.print(
        f"[bold]{app.uid or '?'}[/] {summary.status.value}: {summary.cycles} cycle(s), "
        f"{summary.telemetry} reading(s), {summary.commands} command(s), "
        f"{summary.firmware_applied} firmware update(s), {summary.rotations} rotation(s)"
    )
    if summary.status is DeviceStatus.REVOKED:
        out.print("[bold red]revoked by the fleet: stopped[/]")
        raise typer.Exit(EXIT_REVOKED)
    if summary.status is DeviceStatus.FAILED:
        raise typer.Exit(1)


def _hex(text: str, name: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise _fail(f"{name} must be hex") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _fail(str(exc)) from None


__all__ = ["device_app"]

"""Fixtures for the end-to-end tests on the real PC/SC stack (pcscd + vsmartcard vpcd).

``pcsc_stack`` (session): makes sure pcscd runs with the vpcd reader (``scripts/services.sh``
as root); skips, saying why, only when not root or the Debian packages are missing (set
``IOTID_REQUIRE_PCSC=1`` to fail instead, as CI should). ``served_card`` (per test): the card
process, from ``serve_command``, connected to the vpcd reader; SIGTERM stops it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from iotid.se import Card
from iotid.transport.base import TransportError

REPO = Path(__file__).resolve().parents[2]
SERVICES_SCRIPT = REPO / "scripts" / "services.sh"

VPCD_HOST = "127.0.0.1"
VPCD_PORT = 35963
#: pcsc-lite names the vpcd slot on port 35963 "<FRIENDLYNAME> 00 00".
READER = "Virtual PCD 00 00"
READY_TIMEOUT = 20.0


#: UID of the card every ``served_card`` fixture creates.
SERVED_UID = bytes.fromhex("00112233445566778899")


def serve_command(state_dir: Path) -> list[str]:
    """The command that serves a card to the vpcd reader. To use the real card, return
    ``[str(Path(sys.executable).with_name("iotid")), "se", "serve", str(state_dir),
    "--vpcd", f"{VPCD_HOST}:{VPCD_PORT}"]`` (the venv's console script: PATH may lack it).
    """
    return [
        str(Path(sys.executable).with_name("iotid")),
        "se",
        "serve",
        str(state_dir),
        "--vpcd",
        f"{VPCD_HOST}:{VPCD_PORT}",
    ]


def _missing_packages() -> list[str]:
    missing = []
    if shutil.which("pcscd") is None:
        missing.append("pcscd")
    conf_dir = Path("/etc/reader.conf.d")
    if not any("libifdvpcd" in p.read_text() for p in conf_dir.glob("*") if p.is_file()):
        missing.append("vsmartcard-vpcd")
    if shutil.which("opensc-tool") is None:
        missing.append("opensc")
    return missing


def _port_listening(port: int) -> bool:
    """Read /proc rather than connect: vpcd would take a probe connection for a card."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(f[1].endswith(suffix) and f[3] == "0A" for f in (ln.split() for ln in lines)):
            return True
    return False


def _skip_or_fail(reason: str) -> None:
    print(f"PC/SC stack unavailable: {reason}", file=sys.stderr)
    if os.environ.get("IOTID_REQUIRE_PCSC") == "1":
        pytest.fail(f"IOTID_REQUIRE_PCSC=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pcsc_stack() -> None:
    """pcscd with the vpcd reader listening on 127.0.0.1:35963."""
    missing = _missing_packages()
    if missing:
        _skip_or_fail(f"packages missing: {', '.join(missing)} (apt-get install them)")
    if os.geteuid() != 0:
        if _port_listening(VPCD_PORT):
            return  # someone ran scripts/services.sh already
        _skip_or_fail("not root, cannot run scripts/services.sh to start pcscd")
    done = subprocess.run(
        [str(SERVICES_SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    print(done.stdout, end="")
    assert done.returncode == 0, f"services.sh failed:\n{done.stdout}{done.stderr}"


@dataclass
class ServedCard:
    process: subprocess.Popen[bytes]
    log: Path
    state_dir: Path
    reader: str = READER

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 3.0) -> int:
        """SIGTERM; the exit status (TimeoutExpired if it does not exit within ``timeout``)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def vpcd_lock() -> Iterator[None]:
    """One card process at a time on the vpcd port, across pytest-xdist workers."""
    path = Path(tempfile.gettempdir()) / f"iotid-vpcd-{VPCD_PORT}.lock"
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _card_in_reader(reader: str) -> bool:
    """pcscd's own view of the slot (SCardGetStatusChange): no driver call, no card access."""
    # Lazy: pyscard needs libpcsclite, and other e2e tests share this conftest.
    from smartcard import scard  # noqa: PLC0415

    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        raise TransportError(f"PC/SC service unavailable: {scard.SCardGetErrorMessage(hresult)}")
    try:
        hresult, states = scard.SCardGetStatusChange(
            context, 0, [(reader, scard.SCARD_STATE_UNAWARE)]
        )
        if hresult != scard.SCARD_S_SUCCESS:
            raise TransportError(f"{reader!r}: {scard.SCardGetErrorMessage(hresult)}")
        return bool(states[0][1] & scard.SCARD_STATE_PRESENT)
    finally:
        scard.SCardReleaseContext(context)


def _wait_card_in_reader(
    reader: str, present: bool, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> bool:
    """Wait until pcscd reports the slot full (or empty); False on timeout or process exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        if _card_in_reader(reader) == present:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def served_card(pcsc_stack: None, vpcd_lock: None, tmp_path: Path) -> Iterator[ServedCard]:
    """The card process connected to the vpcd reader, visible to PC/SC."""
    if not _wait_card_in_reader(READER, False, 10.0):
        pytest.fail(f"{READER!r} already holds a card: is another card process serving it?")
    state_dir = tmp_path / "card"
    Card.create(state_dir, uid=SERVED_UID)
    log = tmp_path / "card.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            serve_command(state_dir), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
        )
    card = ServedCard(process, log, state_dir)
    try:
        if not _wait_card_in_reader(card.reader, True, READY_TIMEOUT, process):
            status = process.poll()
            pytest.fail(
                f"card not in {card.reader!r} after {READY_TIMEOUT}s (process status {status}):\n"
                f"{card.output()}"
            )
        yield card
    finally:
        if process.poll() is None:
            try:
                card.terminate(timeout=5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # Leave the slot empty in pcscd's eyes before the next card connects: a card swapped
        # within one presence poll (~0.4 s) leaves pcscd with a stale, unusable slot state.
        _wait_card_in_reader(card.reader, False, 10.0)

"""``iotid fleet serve`` as a real subprocess, for the kill -9 and two-process tests.

Scope: :func:`start_fleet` runs ``iotid fleet serve --dir D --db URL`` in a new interpreter:
the ``iotid fleet`` command group (``iotid.cli.fleet.fleet_app``, what the ``iotid`` script
mounts as ``fleet``) without importing the unrelated command groups, for a faster start. Ports
are 0 by default (the kernel picks free ones, read back from the "fleet serving" log line); the
environment is the test's minus every ``IOTID_FLEET_*`` variable plus ``env`` (e.g.
``IOTID_FLEET_CRASH_AT``). It returns a :class:`FleetProcess` once ``/readyz`` answers 200.
:meth:`FleetProcess.restart` starts the same fleet again on the SAME ports (what a supervisor
does after a crash: the devices keep their configured addresses). :meth:`FleetProcess.wait_exit`,
:meth:`FleetProcess.stop` (SIGTERM, then SIGKILL if it hangs) and :meth:`FleetProcess.kill` end
it; its output goes to a log file that failures quote.

Not in scope: making the fleet directory or the database (``support.fleetworld``, the fleet
fixtures), the device side.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FleetProcess", "FleetProcessError", "iotid_fleet_command", "start_fleet"]

_SERVING = re.compile(r"fleet serving: API (\S+):(\d+), gateway (\S+):(\d+)")
START_TIMEOUT_S = 60.0


class FleetProcessError(RuntimeError):
    """The fleet process did not start (its log is in the message)."""


def iotid_fleet_command() -> list[str]:
    """``iotid fleet`` as an argv prefix: the command group run by this test interpreter."""
    return [
        sys.executable,
        "-c",
        "from iotid.cli.fleet import fleet_app; fleet_app(prog_name='iotid fleet')",
    ]


@dataclass
class FleetProcess:
    """One running ``iotid fleet serve`` (see the module docstring)."""

    fleet_dir: Path
    db_url: str
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    api_port: int
    gateway_port: int
    _logs: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_exit(self, timeout: float = 30.0) -> int:
        """The exit status (negative: killed by that signal); raises if still running."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise FleetProcessError(f"fleet pid {self.pid} still running:\n{self.log()}") from None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a clean stop), SIGKILL if it does not end in ``timeout``."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (teardown: nothing is left to check)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def restart(self, *, env: dict[str, str] | None = None) -> FleetProcess:
        """The same fleet (directory, database, ports) in a new process; this one must have
        ended. ``env``: the extra environment of the new process (default: none)."""
        if self.proc.poll() is None:
            raise FleetProcessError(f"fleet pid {self.pid} is still running")
        n = len(self._logs) + 1
        log = self.log_path.with_name(f"{self.log_path.stem}.{n}{self.log_path.suffix}")
        again = start_fleet(
            self.fleet_dir,
            self.db_url,
            log,
            env=env,
            api_port=self.api_port,
            gateway_port=self.gateway_port,
        )
        again._logs = [*self._logs, self.log_path]
        return again


def _ready(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/readyz", timeout=2) as resp:  # noqa: S310 (http://127.0.0.1)
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def start_fleet(
    fleet_dir: Path,
    db_url: str,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    api_port: int = 0,
    gateway_port: int = 0,
    timeout: float = START_TIMEOUT_S,
) -> FleetProcess:
    """Start ``iotid fleet serve`` and wait until its API is ready (see the module docstring)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IOTID_FLEET_")}
    environment.update(env or {})
    environment["PYTHONUNBUFFERED"] = "1"
    args = [
        *iotid_fleet_command(),
        "serve",
        "--dir",
        str(fleet_dir),
        "--db",
        db_url,
        "--api",
        f"127.0.0.1:{api_port}",
        "--gateway",
        f"127.0.0.1:{gateway_port}",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=environment)
    running = FleetProcess(fleet_dir, db_url, log_path, dict(env or {}), proc, 0, 0)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise FleetProcessError(
                    f"iotid fleet serve exited with {proc.returncode}:\n{running.log()}"
                )
            if time.monotonic() > deadline:
                raise FleetProcessError(
                    f"iotid fleet serve not ready in {timeout} s:\n{running.log()}"
                )
            if not running.api_port:
                match = _SERVING.search(running.log())
                if match is not None:
                    running.api_port, running.gateway_port = int(match[2]), int(match[4])
            if running.api_port and _ready(running.api_url):
                return running
            time.sleep(0.05)
    except BaseException:
        with contextlib.suppress(OSError):
            running.stop(5)
        raise

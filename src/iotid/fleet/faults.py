"""Crash points for the kill -9 tests of the fleet (the fleet's counterpart of the card's
NVM write-point hook).

Scope: :func:`crash_point` names a place in a service ("enrollment.committed", ...). When the
environment variable ``IOTID_FLEET_CRASH_AT`` of the process names that place, the process
sends itself SIGKILL there: no cleanup, no flush, exactly what a power cut or an OOM kill does.
Unset (always, in production) it costs one dictionary lookup.

Not in scope: deciding where the crash points are (the services), restarting (the tests).
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "crash_point"]

CRASH_ENV = "IOTID_FLEET_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process if ``IOTID_FLEET_CRASH_AT`` equals ``name``."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)

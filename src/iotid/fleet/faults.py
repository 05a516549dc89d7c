"""Crash points for the kill -9 tests of the fleet (the fleet's counterpart of the card's
NVM write-point hook).

Scope: :func:`crash_point` names a place in a service. When the environment variable
``IOTID_FLEET_CRASH_AT`` of the process names that place, the process sends itself SIGKILL
there: no cleanup, no flush, exactly what a power cut or an OOM kill does. Unset (always, in
production) it costs one dictionary lookup.

The crash points (:data:`CRASH_POINTS`; tests/integration/test_fleet_kill9.py kills a real
``iotid fleet serve`` at each one and checks the device converges after a restart):

- ``enroll.before_commit``: an enrollment (or renewal) accepted, every row written (state,
  certificate, evidence, audit, nonce consumed), the transaction not committed
  (``EnrollmentService._accept``);
- ``enroll.after_commit``: the enrollment committed, the certificate not yet sent
  (``EnrollmentService.enroll``);
- ``rotate.prepare.before_commit``: the pending rotation, its certificate and acknowledgement
  written, not committed (``RotationService._store``);
- ``rotate.prepare.after_commit``: the rotation prepared and committed, the answer not yet sent
  (``RotationService.prepare``);
- ``rotate.complete.before_commit``: the rotation committed in the registry's rows (key, epoch,
  superseded certificates revoked), the transaction not committed (``RotationService.complete``,
  reached from the gateway's connection hook when the device shows the new certificate);
- ``rotate.complete.after_commit``: the completion committed, the caller not yet answered.

Not in scope: restarting (the tests).
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "CRASH_POINTS", "crash_point"]

CRASH_ENV = "IOTID_FLEET_CRASH_AT"

#: Every crash point placed in the services (see the module docstring).
CRASH_POINTS = (
    "enroll.before_commit",
    "enroll.after_commit",
    "rotate.prepare.before_commit",
    "rotate.prepare.after_commit",
    "rotate.complete.before_commit",
    "rotate.complete.after_commit",
)


def crash_point(name: str) -> None:
    """SIGKILL this process if ``IOTID_FLEET_CRASH_AT`` equals ``name``."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)

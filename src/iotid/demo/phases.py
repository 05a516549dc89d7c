"""The demo's devices: one :class:`~iotid.device.app.DeviceApp` per emulated card, driven phase by
phase through a :class:`~iotid.device.swarm.Swarm`, and the revocation measurement.

Scope: :class:`Fleetside` (what a device needs to reach the fleet), :func:`make_apps` (each app's
``open_se`` opens its card's state directory over a loopback connection: the one place that
plugs emulated cards into the device application), the phase functions (boot + enroll,
telemetry, firmware update, reboot, rotation), :func:`card_floors` (the anti-rollback floor each
card now holds: the update was confirmed) and :func:`measure_revocation`: the missing device's
credential, held by a thief, keeps a live mutual-TLS connection to the gateway; the operator
revokes it; the latency is the time from the revoke call returning to that connection being cut
(or its next request refused), then a fresh connection must be refused, OCSP must say revoked,
the CRL must list the certificate, and the device application must end REVOKED without a retry
storm.

Not in scope: the device application itself (``iotid.device``), the operator's calls
(``fleet_side``), the report (``report``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from iotid.demo.fleet_side import Operator, OperatorError
from iotid.demo.report import RevocationResult
from iotid.device import DeviceRevoked, FleetClient, FleetError, RetryPolicy
from iotid.device.app import DeviceApp, DeviceConfig, DeviceStatus
from iotid.host.errors import HostError
from iotid.host.secureelement import SecureElement
from iotid.se.card import Card
from iotid.transport.loopback import LoopbackConnection

__all__ = [
    "Fleetside",
    "card_floors",
    "make_app",
    "make_apps",
    "measure_revocation",
]

#: How often the thief's connection is exercised while waiting for the revocation to bite.
_POLL_S = 0.005
#: Give up waiting for the cut after this long (the goal is well under a second).
_CUT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Fleetside:
    api_url: str
    gateway: str
    #: The fleet's CA bundle (issuing CA + root): validates the gateway before enrollment.
    ca_pem: bytes


def open_card(card_dir: Path) -> Callable[[], SecureElement]:
    """``open_se`` for the device application: the card's NVM over an in-process loopback."""

    def open_se() -> SecureElement:
        return SecureElement(LoopbackConnection(Card.open(card_dir)))

    return open_se


def make_app(card_dir: Path, state_dir: Path, fleet: Fleetside) -> DeviceApp:
    return DeviceApp(
        open_card(card_dir),
        fleet.api_url,
        gateway=fleet.gateway,
        state_dir=state_dir,
        ca_pem=fleet.ca_pem,
        # The demo reboots every device in a phase of its own after the update (``reboot()``).
        config=DeviceConfig(
            telemetry_interval=0.0,
            backoff_initial=0.05,
            backoff_max=1.0,
            reboot_after_update=False,
        ),
        retry=RetryPolicy(attempts=3, base=0.05, cap=0.5),
    )


def make_apps(card_dirs: Sequence[Path], devices_dir: Path, fleet: Fleetside) -> list[DeviceApp]:
    return [make_app(card, devices_dir / f"{i:06d}", fleet) for i, card in enumerate(card_dirs)]


def card_floors(card_dirs: Sequence[Path]) -> list[int]:
    """Each card's anti-rollback floor (GET STATE), read with the devices shut down."""
    floors = []
    for card_dir in card_dirs:
        se = open_card(card_dir)()
        try:
            floors.append(se.firmware.state().floor)
        finally:
            se.close()
    return floors


def _wait_cut(poll: Callable[[], object]) -> float | None:
    """perf_counter() when ``poll`` is first refused as revoked (None: never, or another error)."""
    deadline = time.perf_counter() + _CUT_TIMEOUT_S
    while time.perf_counter() < deadline:
        try:
            poll()
        except DeviceRevoked:
            return time.perf_counter()
        except FleetError:
            return time.perf_counter()  # the connection was cut and not re-established
        time.sleep(_POLL_S)
    return None


def measure_revocation(
    uid: str,
    card_dir: Path,
    state_dir: Path,
    fleet: Fleetside,
    operator: Operator,
    issuer: x509.Certificate,
) -> RevocationResult:
    """Revoke ``uid`` while its credential holds a live gateway connection; see the module."""
    se = open_card(card_dir)()
    no_retry = RetryPolicy.none()
    try:
        thief = FleetClient(
            se, fleet.api_url, gateway=fleet.gateway, ca_pem=fleet.ca_pem, retry=no_retry
        )
        leaf = se.mtls.chain()[0]
        session = thief.gateway()
        session.whoami()  # the live connection
        answer = operator.revoke(uid, "key_compromise")
        returned = time.perf_counter()
        returned_wall = time.time()
        cut = _wait_cut(session.whoami)
        cut_wall = returned_wall + (cut - returned) if cut is not None else None
        session.close()
        fresh = FleetClient(
            se, fleet.api_url, gateway=fleet.gateway, ca_pem=fleet.ca_pem, retry=no_retry
        )
        try:
            fresh.gateway().whoami()
            refused = False
        except DeviceRevoked:
            refused = True
        except FleetError:
            refused = True  # the handshake was cut: not admitted either way
        revoked_at = answer.get("revoked_at")
        fleet_latency = None
        if cut_wall is not None and isinstance(revoked_at, str):
            recorded = dt.datetime.fromisoformat(revoked_at.replace("Z", "+00:00"))
            if recorded.tzinfo is None:
                recorded = recorded.replace(tzinfo=dt.UTC)
            fleet_latency = cut_wall - recorded.timestamp()
        try:
            ocsp_status: str | None = operator.ocsp_status(leaf, issuer)
        except (OperatorError, ValueError) as exc:
            ocsp_status = f"error: {exc}"
        try:
            listed = operator.crl_lists(leaf.serial_number)
        except (OperatorError, ValueError):
            listed = False
    finally:
        se.close()
    # The device comes back (or the thief runs its firmware): its application stops at once.
    app = make_app(card_dir, state_dir, fleet)
    try:
        app.cycle()
        status: str | None = str(app.status)
    except (HostError, FleetError) as exc:
        status = f"error: {exc}"
    finally:
        app.close()
    return RevocationResult(
        uid=uid,
        latency_seconds=None if cut is None else cut - returned,
        fleet_recorded_latency_seconds=fleet_latency,
        revoked_at=revoked_at if isinstance(revoked_at, str) else None,
        new_connection_refused=refused,
        ocsp_status=ocsp_status,
        crl_lists_serial=listed,
        app_status=status,
    )


def revoked(status: str | None) -> bool:
    return status == str(DeviceStatus.REVOKED)

"""The device application: what the host MCU runs, built only on the host shim.

Scope: :class:`DeviceApp`, one device's program. ``boot()``: open the SE (``open_se()``),
PROVISION the identity key on first boot, confirm a firmware image that booted after a VALID
verdict (:mod:`iotid.device.updater`), enroll with an attestation quote when the card holds no
usable certificate. Then the phases, each over a gateway session of its own (mutual TLS with
the key in the SE) that is closed again: ``send_telemetry`` (signed on the card),
``poll_commands`` (decrypted on the card), ``update_firmware`` (streamed through the SE, applied
only when VALID, confirmed after the reboot), ``rotate_if_due`` (when the operator scheduled it:
whoami's ``rotation_due``; an interrupted rotation's journal always resumes). ``cycle()`` does
all of it over ONE session and never raises; ``run()`` repeats it until stopped.

Failure behaviour:

- revoked (the gateway or the API answers ``device.revoked`` / ``batch.revoked``): status
  ``REVOKED``, one last report (a log line and ``revoked_report`` in the state file), and from
  then on every method returns at once without touching the network, across restarts too;
- SE unavailable (a transport error: the card was removed): status ``SE_UNAVAILABLE``, the SE is
  closed, and the next call re-opens it with ``open_se()`` after a backoff with jitter. Nothing
  is lost: a firmware stream starts over, a rotation resumes from its journal, a re-opened SE
  must be the same card (same UID). A handshake refused while the SE cannot be reached is the
  SE's fault, not a revocation;
- fleet unavailable (5xx, connection refused, timeouts after the channel's own retries): status
  ``FLEET_UNAVAILABLE`` and the same backoff in ``run()``;
- a gateway whose certificate does not validate, an SE that is not personalised or a different
  card: ``FAILED`` (terminal: a person must look).

Phase methods raise typed errors (:class:`~iotid.device.errors.DeviceRevoked` at once after
revocation, :class:`~iotid.device.outcomes.SecureElementUnavailable`,
:class:`~iotid.device.errors.FleetUnavailable`, :class:`~iotid.device.errors.FleetRefused`);
``cycle()`` and ``run()`` turn them into the status and the report's ``error``.
Not thread-safe: one thread drives one DeviceApp at a time (:mod:`iotid.device.swarm` runs many).
Not in scope: the HTTP/TLS plumbing (:mod:`iotid.device.http`), the card, choosing the SE (the
caller's ``open_se``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

from iotid.apdu import ApduError
from iotid.device.errors import (
    DeviceRevoked,
    DeviceStateError,
    FleetError,
    FleetUnavailable,
    GatewayUntrusted,
)
from iotid.device.fleetclient import FleetClient
from iotid.device.gateway import Command, FirmwareOutcome, GatewaySession
from iotid.device.http import RetryPolicy, parse_address
from iotid.device.issued import EnrollmentInfo
from iotid.device.outcomes import (
    Backoff,
    BootReport,
    CycleReport,
    DeviceConfig,
    DeviceStatus,
    RunSummary,
    SecureElementUnavailable,
)
from iotid.device.state import DeviceState
from iotid.device.updater import confirm_pending, report_due, stage_update
from iotid.host.errors import HostError
from iotid.host.mtls import NoCredentialError
from iotid.host.provisioning import ProvisioningError
from iotid.host.secureelement import SecureElement
from iotid.transport.base import TransportError

__all__ = [
    "BootReport",
    "CycleReport",
    "DeviceApp",
    "DeviceConfig",
    "DeviceStatus",
    "RunSummary",
    "SecureElementUnavailable",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What a card that answers (but says no) raises: not an outage.
_CARD_ERRORS = (ApduError, HostError)
#: What ``cycle()`` reports instead of raising.
_REPORTED = (SecureElementUnavailable, FleetError, ApduError, HostError, ValueError, OSError)


class DeviceApp:
    """One device (see the module docstring).

    ``open_se``: opens the device's secure element (called at boot and after the SE was lost;
    raises a ``TransportError`` or ``OSError`` while there is none). ``api_url``: the fleet's
    operator API (enrollment); ``gateway``: ``host:port`` of the device gateway; ``state_dir``:
    the device's public state (never keys); ``ca_pem``: CA bundle for an ``https://`` API.
    ``sleep`` is injectable (tests); ``run()`` waits on its ``stop`` event instead.
    """

    def __init__(
        self,
        open_se: Callable[[], SecureElement],
        api_url: str,
        *,
        gateway: str,
        state_dir: Path,
        ca_pem: bytes | None = None,
        config: DeviceConfig | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        parse_address(gateway)  # ValueError now rather than at the first call
        self.config = config or DeviceConfig()
        self.api_url = api_url
        self.gateway_address = gateway
        self.state = DeviceState(state_dir)
        if self.state.gateway != gateway:
            self.state.update(gateway=gateway)
        self._open_se = open_se
        self._ca_pem = ca_pem
        self._retry = retry
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter and sample readings
        self._backoff = Backoff(self.config.backoff_initial, self.config.backoff_max, self._rng)
        self._retry_at = 0.0  # time.monotonic() before which a lost SE is not re-opened
        self._se: SecureElement | None = None
        self._client: FleetClient | None = None
        self._booted = False
        self._cycles = 0
        self._sent = 0
        self._started = time.monotonic()
        uid = self.state.get("uid")
        self._uid: str | None = uid if isinstance(uid, str) else None
        self._status = DeviceStatus.REVOKED if self.state.revoked else DeviceStatus.NEW

    def __repr__(self) -> str:
        return f"DeviceApp(uid={self._uid!r}, status={self._status.value})"

    # -- public state ----------------------------------------------------------------------------
    @property
    def status(self) -> DeviceStatus:
        return self._status

    @property
    def uid(self) -> str | None:
        return self._uid

    @property
    def firmware_dir(self) -> Path:
        if self.config.firmware_dir is not None:
            return self.config.firmware_dir
        if self.state.directory is None:  # pragma: no cover - state_dir is required
            raise DeviceStateError("no directory to stage firmware in")
        return self.state.directory / "firmware"

    def close(self) -> None:
        """Close the fleet client and the SE (idempotent)."""
        self._drop_se()

    def __enter__(self) -> DeviceApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- phases ----------------------------------------------------------------------------------
    def boot(self) -> BootReport:
        """Open the SE, provision if needed, confirm staged firmware, enroll if needed."""
        return self._attempt(self._boot)

    def reboot(self) -> BootReport:
        """Power-cycle: close the SE and boot again (the bootloader starts a staged image)."""
        self._drop_se()
        return self.boot()

    def enroll(self) -> EnrollmentInfo:
        """Enroll (again) with a fresh attestation quote; the certificate goes onto the card."""

        def go() -> EnrollmentInfo:
            self._ready(boot=False)
            return self._enroll()

        return self._attempt(go)

    def send_telemetry(self, payload: Mapping[str, object] | None = None) -> str:
        """One signed reading (``payload`` as canonical JSON; default: a sample); its id."""
        return self._attempt(lambda: self._in_session(lambda gw: self._telemetry(gw, payload)))

    def poll_commands(self) -> list[Command]:
        """Fetch, decrypt on the card and acknowledge the commands waiting for this device."""
        return self._attempt(lambda: self._in_session(self._commands))

    def update_firmware(self) -> FirmwareOutcome | None:
        """Install the release assigned to this device's group if it is new: streamed through
        the SE, applied only when VALID (with ``reboot_after_update``: rebooted into and
        confirmed before this returns). None: nothing assigned, or nothing new."""

        def go() -> FirmwareOutcome | None:
            outcome = self._in_session(self._firmware)
            if outcome is not None and outcome.applied and self.config.reboot_after_update:
                self._reboot_inner()
            return outcome

        return self._attempt(go)

    def rotate_if_due(self) -> EnrollmentInfo | None:
        """Rotate the identity key when the operator scheduled it (whoami's ``rotation_due``)
        or an earlier rotation was interrupted; None otherwise."""
        return self._attempt(lambda: self._in_session(self._rotation))

    def cycle(self) -> CycleReport:
        """One pass over one gateway session: owed reports, telemetry, commands, firmware,
        rotation, renewal. Never raises for outages: see ``status`` and ``report.error``."""
        self._cycles += 1
        report = CycleReport(index=self._cycles, status=self._status)
        if self._status.terminal:
            report.error = f"device is {self._status.value}"
            return report
        start = time.monotonic()
        try:
            self._attempt(lambda: self._cycle(report))
        except DeviceRevoked as exc:
            report.error = f"revoked: {exc}"
        except _REPORTED as exc:
            report.error = _one_line(exc)
        report.status = self._status
        report.seconds = time.monotonic() - start
        return report

    def run(
        self,
        stop: threading.Event,
        *,
        cycles: int | None = None,
        on_cycle: Callable[[CycleReport], None] | None = None,
    ) -> RunSummary:
        """Cycle every ``telemetry_interval`` seconds until ``stop`` is set, ``cycles`` passes
        were made, or the device is revoked or failed. After an outage the next pass waits for
        the backoff instead of the interval."""
        summary = RunSummary(status=self._status)
        start = time.monotonic()
        while not stop.is_set() and (cycles is None or summary.cycles < cycles):
            report = self.cycle()
            summary.add(report)
            if on_cycle is not None:
                on_cycle(report)
            if self._status.terminal or (cycles is not None and summary.cycles >= cycles):
                break
            delay = self.config.telemetry_interval
            if not report.ok:
                delay = max(0.0, self._retry_at - time.monotonic())
            if stop.wait(delay):
                break
        summary.status = self._status
        summary.wall_seconds = time.monotonic() - start
        return summary

    # -- the failure policy ----------------------------------------------------------------------
    def _attempt(self, fn: Callable[[], T]) -> T:
        """Run one phase under the failure policy (module docstring)."""
        if self._status is DeviceStatus.REVOKED:
            raise DeviceRevoked("this device was revoked; not calling the fleet")
        if self._status is DeviceStatus.FAILED:
            raise DeviceStateError("the device application has failed; see its log")
        try:
            result = fn()
        except (TransportError, SecureElementUnavailable) as exc:
            self._se_lost(exc)
            raise SecureElementUnavailable(_one_line(exc)) from None
        except DeviceRevoked as exc:
            if self._se is not None and not self._se_reachable():
                # The handshake failed because the card is gone, not because of the fleet.
                self.state.update(revoked=None)
                self._se_lost(exc)
                raise SecureElementUnavailable("the SE went away during the handshake") from None
            self._revoked(exc)
            raise
        except FleetUnavailable:
            self._status = DeviceStatus.FLEET_UNAVAILABLE
            self._retry_at = time.monotonic() + self._backoff.failure()
            raise
        except GatewayUntrusted as exc:
            self._fail(f"the gateway is not trusted: {exc}")
            raise
        self._backoff.success()
        if self._status in (DeviceStatus.SE_UNAVAILABLE, DeviceStatus.FLEET_UNAVAILABLE):
            self._status = DeviceStatus.RUNNING
        return result

    def _se_lost(self, exc: BaseException) -> None:
        delay = self._backoff.failure()
        log.warning("device %s: secure element unavailable (%s); retry in %.1fs",
                    self._uid, _one_line(exc), delay)  # fmt: skip
        self._status = DeviceStatus.SE_UNAVAILABLE
        self._retry_at = time.monotonic() + delay
        self._drop_se()

    def _revoked(self, exc: BaseException) -> None:
        self._status = DeviceStatus.REVOKED
        report = {
            "at": dt.datetime.now(dt.UTC).isoformat(),
            "reason": _one_line(exc),
            "epoch": self.state.get("epoch"),
            "telemetry_sent": self._sent,
            "cycles": self._cycles,
        }
        self.state.update(revoked=True, revoked_report=report)
        log.error("device %s: revoked by the fleet (%s); stopping, no further calls",
                  self._uid, report["reason"])  # fmt: skip
        self._drop_se()

    def _fail(self, why: str) -> None:
        self._status = DeviceStatus.FAILED
        self.state.update(failed=why)
        log.error("device %s: failed: %s", self._uid, why)
        self._drop_se()

    def _se_reachable(self) -> bool:
        se = self._se
        if se is None:
            return False
        try:
            se.provisioning.state()
        except TransportError:
            return False
        except Exception:  # the card answered: it is there
            return True
        return True

    def _drop_se(self) -> None:
        if self._client is not None:
            with suppress(Exception):
                self._client.close()
            self._client = None
        if self._se is not None:
            with suppress(Exception):
                self._se.close()
            self._se = None
        self._booted = False

    # -- the SE and the fleet client -------------------------------------------------------------
    def _ready(self, *, boot: bool = True) -> tuple[SecureElement, FleetClient]:
        """The open SE and fleet client; booted first unless ``boot`` is False."""
        if boot and not self._booted:
            self._boot()
        se, client = self._se, self._client
        if se is None or client is None:
            se, client = self._open()
        return se, client

    def _open(self) -> tuple[SecureElement, FleetClient]:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            self._sleep(wait)
        try:
            se = self._open_se()
        except (TransportError, OSError) as exc:
            raise SecureElementUnavailable(f"cannot open the SE: {_one_line(exc)}") from None
        try:
            uid = se.provisioning.state().uid.hex().upper()
        except ProvisioningError as exc:
            se.close()
            self._fail(f"the secure element is not usable: {exc}")
            raise DeviceStateError(str(exc)) from None
        except BaseException:
            se.close()
            raise
        if self._uid is not None and uid != self._uid:
            se.close()
            self._fail(f"a different secure element ({uid}, expected {self._uid})")
            raise DeviceStateError("a different secure element was inserted")
        client = FleetClient(
            se,
            self.api_url,
            gateway=self.gateway_address,
            ca_pem=self._ca_pem,
            state_dir=None,
            retry=self._retry,
            sleep=self._sleep,
        )
        client.state = self.state  # one state object: the app's
        self._se, self._client, self._uid = se, client, uid
        if self._status in (DeviceStatus.SE_UNAVAILABLE, DeviceStatus.NEW):
            log.info("device %s: secure element open", uid)
        return se, client

    @contextmanager
    def _session(self) -> Iterator[GatewaySession]:
        _se, client = self._ready()
        gw = client.gateway()
        try:
            yield gw
        finally:
            gw.close()

    def _in_session(self, fn: Callable[[GatewaySession], T]) -> T:
        with self._session() as gw:
            report_due(gw, self.state)
            return fn(gw)

    # -- boot ------------------------------------------------------------------------------------
    def _boot(self) -> BootReport:
        if self._se is None:
            self._open()
        se = self._se
        assert se is not None  # noqa: S101 - _open set it
        state = se.provisioning.state()
        provisioned_now = False
        if not state.provisioned:
            se.provisioning.provision()
            provisioned_now = True
            self._status = DeviceStatus.PROVISIONED
            log.info("device %s: identity key provisioned in the SE", self._uid)
        confirmed = confirm_pending(se, self.state)
        if confirmed is not None:
            log.info("device %s: firmware %s booted and confirmed", self._uid, confirmed)
        enrolled_now = False
        if self._needs_enrollment(se):
            self._enroll()
            enrolled_now = True
        if self._status in (DeviceStatus.NEW, DeviceStatus.PROVISIONED):
            self._status = DeviceStatus.ENROLLED
        self._booted = True
        if confirmed is not None:
            with suppress(FleetUnavailable):  # owed; sent with the next session otherwise
                self._in_session(lambda _gw: None)
        epoch = self.state.get("epoch")
        version = self.state.get("firmware_version")
        return BootReport(
            uid=self._uid or "",
            epoch=epoch if isinstance(epoch, int) else 0,
            provisioned_now=provisioned_now,
            enrolled_now=enrolled_now,
            firmware_confirmed=confirmed,
            firmware_version=version if isinstance(version, str) else None,
        )

    def _needs_enrollment(self, se: SecureElement) -> bool:
        if self.state.get("uid") != self._uid or not self.state.gateway_ca():
            return True
        if self.state.rotation is not None:
            return False  # a rotation in flight: its journal finishes it
        try:
            chain = se.mtls.chain()
        except NoCredentialError:
            return True
        return not chain or chain[0].not_valid_after_utc <= dt.datetime.now(dt.UTC)

    def _enroll(self) -> EnrollmentInfo:
        _se, client = self._ready(boot=False)
        info = client.enroll()
        log.info("device %s: enrolled at epoch %d", info.uid, info.epoch)
        return info

    def _reboot_inner(self) -> None:
        self._drop_se()
        self._boot()

    # -- the phases' bodies (inside a session) ---------------------------------------------------
    def _cycle(self, report: CycleReport) -> None:
        with self._session() as gw:
            report_due(gw, self.state)
            report.telemetry_id = self._telemetry(gw, None)
            report.commands = self._commands(gw)
            report.firmware = self._firmware(gw)
            report.rotated = self._rotation(gw)
            report.renewed = self._renew_if_needed(gw)
        firmware = report.firmware
        if firmware is not None and firmware.applied and self.config.reboot_after_update:
            self._reboot_inner()
            report.rebooted = True
        self._status = DeviceStatus.RUNNING

    def _telemetry(self, gw: GatewaySession, payload: Mapping[str, object] | None) -> str:
        body = dict(payload) if payload is not None else self._sample()
        data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        reading = gw.send_telemetry(data)
        self._sent += 1
        return reading

    def _sample(self) -> dict[str, object]:
        return {
            "seq": self._sent + 1,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "temperature_c": round(20.0 + self._rng.gauss(0.0, 1.5), 2),
            "firmware": self.state.get("firmware_version"),
        }

    def _commands(self, gw: GatewaySession) -> list[Command]:
        commands = gw.commands()
        for command in commands:
            log.info("device %s: command %s (%d bytes)", self._uid, command.id,
                     len(command.plaintext))  # fmt: skip
        return commands

    def _firmware(self, gw: GatewaySession) -> FirmwareOutcome | None:
        se = self._se
        if se is None:  # pragma: no cover - a session implies an open SE
            raise SecureElementUnavailable("no SE")
        return stage_update(gw, se, self.state, self.firmware_dir)

    def _rotation(self, gw: GatewaySession) -> EnrollmentInfo | None:
        if self.state.rotation is None and not gw.whoami().rotation_due:
            return None
        info = gw.rotate()
        log.info("device %s: identity key rotated to epoch %d", self._uid, info.epoch)
        return info

    def _renew_if_needed(self, gw: GatewaySession) -> bool:
        not_after = self.state.get("not_after")
        if not isinstance(not_after, str):
            return False
        try:
            expiry = dt.datetime.fromisoformat(not_after)
        except ValueError:
            return False
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=dt.UTC)
        left = (expiry - dt.datetime.now(dt.UTC)).total_seconds()
        if left > self.config.renew_before:
            return False
        gw.renew_certificate()
        return True


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

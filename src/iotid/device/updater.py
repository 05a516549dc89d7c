"""Firmware updates on the device: stage, verify in the SE, hand to the bootloader, confirm.

Scope: :func:`stage_update` (one gateway session: the release assigned to the device's group,
downloaded, its detached signature if raw, streamed through the SE; a VALID image is recorded
in the device state as *pending* for the bootloader and reported ``valid``; an INVALID one is
reported ``invalid`` and remembered so it is not downloaded again) and :func:`confirm_pending`
(at boot: the new image runs, so CONFIRM raises the card's anti-rollback floor to its security
counter; if the card's last verdict is no longer this image's, the bootloader verifies the
staged slot again first, and an image that does not verify is dropped: the old firmware keeps
running). The ``applied`` report is owed to the fleet until it is sent
(``firmware_report_due``).

State keys (public facts, in :class:`~iotid.device.state.DeviceState`): ``firmware_version`` /
``firmware_sha256`` (running), ``firmware_pending`` (staged and VALID, awaiting the reboot),
``firmware_refused`` (SHA-256 of the last image the SE refused), ``firmware_report_due``.

Fail-safe: a verification that could not run (``Verdict.error``) because the SE went away
raises :class:`~iotid.device.outcomes.SecureElementUnavailable`: nothing is recorded, the next
attempt streams the image again from the start. Not in scope: the SE's rules
(``iotid.host.firmware``), the gateway calls (:mod:`iotid.device.gateway`).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from iotid.device.gateway import FirmwareOutcome, GatewaySession
from iotid.device.outcomes import SecureElementUnavailable
from iotid.device.state import DeviceState
from iotid.host.firmware import ConfirmRefusedError, Verdict
from iotid.host.secureelement import SecureElement
from iotid.transport.base import TransportError

__all__ = ["confirm_pending", "report_due", "stage_update"]

log = logging.getLogger(__name__)


def _se_reachable(se: SecureElement) -> bool:
    try:
        se.firmware.state()
    except TransportError:
        return False
    except Exception:  # the card answered (with an error): it is there
        return True
    return True


def stage_update(
    gw: GatewaySession, se: SecureElement, state: DeviceState, workdir: Path
) -> FirmwareOutcome | None:
    """Check, download and verify the assigned release; None when there is nothing new."""
    release = gw.check_firmware()
    if release is None:
        return None
    pending = state.get("firmware_pending")
    known = {state.get("firmware_sha256"), state.get("firmware_refused")}
    if isinstance(pending, dict):
        known.add(pending.get("sha256"))
    if release.sha256 in known:
        return None
    image = gw.download_firmware(release, workdir / f"{release.name}.img")
    signature = gw.firmware_signature(release)
    verdict = se.verify_firmware(image, signature=signature)
    if verdict.error and not _se_reachable(se):
        raise SecureElementUnavailable(f"firmware {release.name}: {verdict.reason}")
    if not verdict.valid:
        log.warning("firmware %s refused by the SE: %s", release.name, verdict.reason)
        gw.report_firmware(release.version, "invalid")
        state.update(firmware_refused=release.sha256)
        image.unlink(missing_ok=True)
        return FirmwareOutcome(release, verdict, applied=False)
    state.update(
        firmware_pending={
            "name": release.name,
            "version": release.version,
            "sha256": release.sha256,
            "image": str(image),
            "signature": None if signature is None else signature.hex(),
            "security_counter": verdict.security_counter,
        }
    )
    gw.report_firmware(release.version, "valid")
    return FirmwareOutcome(release, verdict, applied=True)


def confirm_pending(se: SecureElement, state: DeviceState) -> str | None:
    """At boot: confirm the staged image the bootloader just started; its version, or None
    when nothing was pending (or the image was dropped). Transport errors propagate (nothing
    changes: the next boot tries again)."""
    pending = state.get("firmware_pending")
    if not isinstance(pending, dict):
        return None
    version = str(pending.get("version"))
    if not _confirm(se, pending):
        log.warning("staged firmware %s no longer verifies; keeping the running image", version)
        state.update(firmware_pending=None, firmware_refused=pending.get("sha256"))
        return None
    state.update(
        firmware_version=version,
        firmware_sha256=pending.get("sha256"),
        firmware_pending=None,
        firmware_report_due=version,
    )
    image = pending.get("image")
    if isinstance(image, str):
        with contextlib.suppress(OSError):
            Path(image).unlink()
    return version


def _confirm(se: SecureElement, pending: dict[str, Any]) -> bool:
    counter = pending.get("security_counter")
    counter = counter if isinstance(counter, int) else 0
    for attempt in range(2):
        try:
            se.firmware.confirm()
            return True
        except ConfirmRefusedError:
            if se.firmware.state().floor >= counter:
                return True  # confirmed before (a reboot after CONFIRM) or no rise needed
        if attempt == 0 and not _reverify(se, pending):
            return False
    return False


def _reverify(se: SecureElement, pending: dict[str, Any]) -> bool:
    """The bootloader verifies the staged slot again (the card's last verdict is another's)."""
    image, sig = pending.get("image"), pending.get("signature")
    if not isinstance(image, str) or not Path(image).is_file():
        return False
    try:
        signature = bytes.fromhex(sig) if isinstance(sig, str) else None
    except ValueError:
        return False
    verdict: Verdict = se.verify_firmware(Path(image), signature=signature)
    if verdict.error and not _se_reachable(se):
        raise TransportError(f"the SE went away while verifying the staged image: {verdict.reason}")
    return verdict.valid


def report_due(gw: GatewaySession, state: DeviceState) -> None:
    """Send the owed ``applied`` report, if any."""
    version = state.get("firmware_report_due")
    if isinstance(version, str):
        gw.report_firmware(version, "applied")
        state.update(firmware_report_due=None)

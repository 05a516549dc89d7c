"""The device's session with the fleet gateway (mutual TLS; the client key stays in the SE).

Scope: :class:`GatewaySession` (a context manager over one keep-alive connection):
``whoami()``, ``send_telemetry(payload)`` (signed on the card), ``commands()`` (decrypted on the
card, then acknowledged), the firmware update loop (``check_firmware``, ``download_firmware``,
``update_firmware``: verified by the SE's bootloader API, applied only when VALID, reported),
``renew_certificate()`` and ``rotate()`` (delegated to :mod:`iotid.device.rotation`).
Telemetry signature rule (``iotid.spec.rotation``): EC: ECDSA DER with the curve's hash (P-256
SHA-256, P-384 SHA-384); RSA: PSS SHA-256, MGF1-SHA-256, salt 32.

Not in scope: HTTP/TLS mechanics (:mod:`iotid.device.http`), booting the new firmware (applying
is simulated: the version is recorded, the card's anti-rollback floor raised), the fleet side.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from iotid.device.errors import DeviceRevoked, DeviceStateError, FleetUnavailable
from iotid.device.http import JsonChannel
from iotid.device.issued import EnrollmentInfo, b64, install_issued, unb64
from iotid.device.rotation import rotate as _rotate
from iotid.device.state import DeviceState
from iotid.host.errors import HostError
from iotid.host.firmware import Verdict
from iotid.host.rotation import DecryptionFailedError, UnknownEpochError
from iotid.host.secureelement import SecureElement
from iotid.host.tls import PublicKey

__all__ = [
    "Command",
    "FirmwareOutcome",
    "FirmwareRelease",
    "GatewaySession",
    "WhoAmI",
    "signature_scheme",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True)
class WhoAmI:
    """The gateway's view of this device. ``rotation_due``: the operator scheduled a rotation of
    its identity key (False when the fleet does not say)."""

    uid: str
    state: str
    epoch: int
    certificate_not_after: str
    rotation_due: bool = False


@dataclass(frozen=True)
class Command:
    """A command the fleet sent, decrypted by the card."""

    id: str
    epoch: int
    plaintext: bytes

    def __repr__(self) -> str:
        return f"Command(id={self.id!r}, epoch={self.epoch}, {len(self.plaintext)} bytes)"


@dataclass(frozen=True)
class FirmwareRelease:
    name: str
    version: str
    kind: str
    sha256: str
    size: int


@dataclass(frozen=True)
class FirmwareOutcome:
    release: FirmwareRelease
    verdict: Verdict
    applied: bool


def signature_scheme(key: PublicKey) -> tuple[str, str]:
    """(hash name, SIGN DIGEST scheme) of the telemetry signature rule for ``key``."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ("sha384" if key.curve.name == "secp384r1" else "sha256"), "ecdsa"
    return "sha256", "pss"


class GatewaySession:
    """Calls to ``/v1/device/...``. Made by :meth:`FleetClient.gateway`."""

    def __init__(self, se: SecureElement, channel: JsonChannel, state: DeviceState) -> None:
        self.se = se
        self.channel = channel
        self.state = state
        self._scheme: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"GatewaySession({self.channel!r})"

    def __enter__(self) -> GatewaySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def reconnect(self) -> None:
        """Drop the connection: the next call handshakes again with the card's current chain."""
        self.channel.close()
        self._scheme = None

    # -- plumbing --------------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, *, idempotent: bool, **kw: Any) -> Any:
        try:
            return self.channel.request(method, path, body, idempotent=idempotent, **kw)
        except DeviceRevoked:
            self.state.update(revoked=True)  # persisted: no retry storm after a reboot either
            raise

    # -- identity --------------------------------------------------------------------------------
    def whoami(self) -> WhoAmI:
        a = self.call("GET", "/v1/device/whoami", idempotent=True)
        return WhoAmI(
            uid=str(a.get("uid")),
            state=str(a.get("state")),
            epoch=int(a.get("epoch") or 0),
            certificate_not_after=str(a.get("certificate_not_after")),
            rotation_due=a.get("rotation_due") is True,
        )

    # -- telemetry -------------------------------------------------------------------------------
    def sign(self, payload: bytes) -> bytes:
        """The card's signature over ``payload`` under the telemetry rule."""
        if self._scheme is None:
            self._scheme = signature_scheme(self.se.mtls.public_key())
        hash_name, scheme = self._scheme
        digest = hashlib.new(hash_name, payload).digest()
        return self.se.mtls.sign_digest(digest, hash_name, scheme)

    def send_telemetry(self, payload: bytes) -> str:
        """POST a signed reading; returns the fleet's id. Not retried (not idempotent)."""
        body = {"payload": b64(payload), "signature": b64(self.sign(payload))}
        return str(self.call("POST", "/v1/device/telemetry", body, idempotent=False).get("id"))

    # -- commands --------------------------------------------------------------------------------
    def commands(self) -> list[Command]:
        """Fetch undelivered commands, decrypt each on the card and acknowledge it. A command the
        card cannot decrypt is logged and left unacknowledged."""
        answer = self.call("GET", "/v1/device/commands", idempotent=True)
        items = answer.get("commands")
        if not isinstance(items, list):
            raise FleetUnavailable("the gateway's commands answer has no list")
        out = []
        for item in items:
            if not isinstance(item, dict):
                raise FleetUnavailable("a command entry is not an object")
            cid, epoch = str(item.get("id")), item.get("epoch")
            if not isinstance(epoch, int):
                raise FleetUnavailable("a command without an epoch")
            blob = unb64(item.get("ciphertext"), "command ciphertext")
            try:
                plaintext = self.se.rotation.decrypt(epoch, blob)
            except (DecryptionFailedError, UnknownEpochError) as exc:
                log.warning("command %s (epoch %d) cannot be decrypted: %s", cid, epoch, exc)
                continue
            self.call("POST", f"/v1/device/commands/{_segment(cid)}/ack", idempotent=True)
            out.append(Command(cid, epoch, plaintext))
        return out

    # -- firmware --------------------------------------------------------------------------------
    def check_firmware(self) -> FirmwareRelease | None:
        release = self.call("GET", "/v1/device/firmware", idempotent=True).get("release")
        if release is None:
            return None
        try:
            return FirmwareRelease(
                name=_segment(str(release["name"])),
                version=str(release["version"]),
                kind=str(release["kind"]),
                sha256=str(release["sha256"]).lower(),
                size=int(release["size"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FleetUnavailable(f"malformed firmware release: {exc}") from None

    def download_firmware(self, release: FirmwareRelease, dest: Path) -> Path:
        """Stream the image to ``dest``; its size and SHA-256 must match the release (transport
        integrity only: the SE decides whether the image is genuine)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "wb") as fh:
            self.call("GET", f"/v1/device/firmware/{release.name}", idempotent=True, stream_to=fh)
        digest = hashlib.sha256()
        with open(dest, "rb") as fh:
            while chunk := fh.read(65536):
                digest.update(chunk)
        if dest.stat().st_size != release.size or digest.hexdigest() != release.sha256:
            dest.unlink()
            raise FleetUnavailable(f"firmware {release.name}: download corrupted")
        return dest

    def update_firmware(
        self, release: FirmwareRelease | None = None, *, workdir: Path | None = None
    ) -> FirmwareOutcome | None:
        """Check, download, verify on the SE; apply (record the version, confirm so the card's
        anti-rollback floor rises) only when VALID; report the verdict. None: nothing to do."""
        release = release or self.check_firmware()
        if release is None or release.sha256 == self.state.get("firmware_sha256"):
            return None  # nothing assigned, or exactly the image already applied
        base = workdir or self.state.directory
        if base is None:
            raise DeviceStateError("no directory to stage the firmware image in")
        image = self.download_firmware(release, base / "firmware" / f"{release.name}.img")
        signature = self.firmware_signature(release)
        verdict = self.se.verify_firmware(image, signature=signature)
        if not verdict.valid:
            log.warning("firmware %s refused by the SE: %s", release.name, verdict.reason)
            self._report(release.version, "invalid")
            return FirmwareOutcome(release, verdict, applied=False)
        self._report(release.version, "valid")
        # Simulated apply + reboot into the new image.
        self.state.update(firmware_version=release.version, firmware_sha256=release.sha256)
        try:
            self.se.firmware.confirm()
        except HostError as exc:
            log.warning("confirming firmware %s failed: %s", release.name, exc)
        self._report(release.version, "applied")
        return FirmwareOutcome(release, verdict, applied=True)

    def firmware_signature(self, release: FirmwareRelease) -> bytes | None:
        """The detached signature of a raw release (None for an MCUboot image: it carries its
        own)."""
        if release.kind == "mcuboot":
            return None
        path = f"/v1/device/firmware/{release.name}/signature"
        signature: bytes = self.call("GET", path, idempotent=True, raw=True)
        return signature

    def report_firmware(self, version: str, verdict: str) -> None:
        """Tell the fleet the outcome for ``version``: ``valid``, ``invalid`` or ``applied``."""
        body = {"version": version, "verdict": verdict}
        self.call("POST", "/v1/device/firmware/report", body, idempotent=True)

    _report = report_firmware

    # -- certificates ----------------------------------------------------------------------------
    def renew_certificate(self) -> EnrollmentInfo:
        """A fresh quote for the current key -> a new short-lived certificate on the card; the
        next call reconnects with it."""
        nonce = unb64(
            self.call("POST", "/v1/device/certificate/nonce", {}, idempotent=True).get("nonce"),
            "nonce",
        )
        quote = self.se.attestation.attest(nonce)
        answer = self.call(
            "POST", "/v1/device/certificate", {"quote": b64(quote)}, idempotent=False
        )
        info = install_issued(self.se, answer)
        self.state.update(serial=info.serial, not_after=info.not_after)
        self.reconnect()
        return info

    def rotate(self) -> EnrollmentInfo:
        """Rotate the identity key (crash-safe; see :func:`iotid.device.rotation.rotate`)."""
        return _rotate(self)


def _segment(value: str) -> str:
    if _NAME.fullmatch(value) is None:
        raise FleetUnavailable(f"the gateway sent an unusable name {value[:40]!r}")
    return value

"""Identity key rotation from the device, crash-safe at every step.

Scope: :func:`rotate`, the device side of the rotation protocol over a gateway session:
``POST /v1/device/rotation/nonce`` -> ROTATE on the card (pending key + proof of continuity) ->
quote (carries the pending key) -> ``POST /v1/device/rotation`` -> COMMIT with the authority's
ack -> new certificate + chain onto the card -> reconnect with the new certificate ->
``POST /v1/device/rotation/complete``. A journal in :class:`~iotid.device.state.DeviceState`
(public data only: the request sent, then the fleet's answer) makes every crash recoverable:

- request sent, answer lost: the same request is sent again (the fleet answers idempotently);
- answer received, COMMIT not done: COMMIT with the recorded ack;
- card committed (its epoch reached the journal's), ``complete`` never called: install the
  recorded certificate if the card lacks it, reconnect with it, complete;
- the card holds a pending key the fleet never saw (no journal): ABORT on the card, start over.

Not in scope: the card commands (``iotid.host.rotation``), the fleet's checks, purging retired
keys (the fleet's authority signs those; not a device decision).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from iotid.device.errors import FleetRefused
from iotid.device.issued import EnrollmentInfo, b64, parse_issued, unb64
from iotid.host.mtls import NoCredentialError
from iotid.host.rotation import AuthorisationRejectedError, NoPendingRotationError

if TYPE_CHECKING:
    from iotid.device.gateway import GatewaySession

__all__ = ["rotate"]

log = logging.getLogger(__name__)


def rotate(gw: GatewaySession) -> EnrollmentInfo:
    """Rotate (or finish an interrupted rotation); the certificate for the new key."""
    resumed = _resume(gw)
    if resumed is not None:
        return resumed
    nonce = unb64(
        gw.call("POST", "/v1/device/rotation/nonce", {}, idempotent=True).get("nonce"), "nonce"
    )
    proof = gw.se.rotation.rotate(nonce)
    quote = gw.se.attestation.attest(nonce)
    request = {
        "nonce": b64(nonce),
        "epoch": proof.epoch,
        "new_spki": b64(proof.public_key_der),
        "proof": b64(proof.signature),
        "quote": b64(quote),
    }
    gw.state.update(rotation={"epoch": proof.epoch, "request": request})
    return _send_and_commit(gw, proof.epoch, request)


def _resume(gw: GatewaySession) -> EnrollmentInfo | None:
    journal = gw.state.rotation
    card = gw.se.rotation.state()
    if journal is None:
        if card.pending:
            log.info("dropping a pending key the fleet never saw (epoch %d)", card.epoch + 1)
            _abort(gw)
        return None
    target = int(journal["epoch"])
    if card.epoch >= target and "answer" in journal:
        return _finish(gw, target, journal["answer"])
    if card.pending and card.epoch + 1 == target:
        if "answer" in journal:
            return _commit(gw, target, journal["answer"])
        try:
            return _send_and_commit(gw, target, journal["request"])
        except FleetRefused as exc:  # the fleet no longer knows that proposal: start over
            log.info("the fleet refused the journaled rotation (%s); starting over", exc.code)
            _abort(gw)
            gw.state.update(rotation=None)
            return None
    log.info("discarding a stale rotation journal (card epoch %d)", card.epoch)
    if card.pending:
        _abort(gw)
    gw.state.update(rotation=None)
    return None


def _send_and_commit(gw: GatewaySession, target: int, request: dict[str, Any]) -> EnrollmentInfo:
    # Idempotent by contract: a retry of the same pending rotation returns the same ack/cert.
    answer = gw.call("POST", "/v1/device/rotation", request, idempotent=True)
    gw.state.update(rotation={"epoch": target, "request": request, "answer": answer})
    return _commit(gw, target, answer)


def _commit(gw: GatewaySession, target: int, answer: dict[str, Any]) -> EnrollmentInfo:
    try:
        epoch = gw.se.rotation.commit(unb64(answer.get("ack"), "ack"))
    except AuthorisationRejectedError:
        # The ack does not verify on the card: never retry it; drop the pending key.
        _abort(gw)
        gw.state.update(rotation=None)
        raise
    if epoch != target:
        log.warning("the card committed epoch %d, expected %d", epoch, target)
    return _finish(gw, target, answer)


def _finish(gw: GatewaySession, target: int, answer: dict[str, Any]) -> EnrollmentInfo:
    info = parse_issued(answer)
    if not _card_has(gw, info):
        gw.se.mtls.install_chain([info.certificate, *info.chain])
    gw.reconnect()  # the next handshake presents the new certificate
    result = gw.call("POST", "/v1/device/rotation/complete", {}, idempotent=True)
    epoch = result.get("epoch")
    gw.state.update(
        rotation=None,
        epoch=epoch if isinstance(epoch, int) else target,
        serial=info.serial,
        not_after=info.not_after,
    )
    return info


def _card_has(gw: GatewaySession, info: EnrollmentInfo) -> bool:
    try:
        chain = gw.se.mtls.chain()
    except NoCredentialError:
        return False
    return bool(chain) and chain[0] == info.certificate


def _abort(gw: GatewaySession) -> None:
    with contextlib.suppress(NoPendingRotationError):
        gw.se.rotation.abort()

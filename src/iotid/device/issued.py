"""The fleet's certificate answer on the device side, and the base64 of the JSON wire.

Scope: :class:`EnrollmentInfo` and :func:`install_issued` (enrollment, renewal and rotation answer
with the same ``{"uid", "epoch", "certificate", "chain", "serial", "not_after"}`` shape: the leaf
and issuing CA go onto the card), :func:`b64` / :func:`unb64` (standard base64; a malformed field
of the fleet's answer is :class:`~iotid.device.errors.FleetUnavailable`, never a crash).
Not in scope: validating the chain (the card checks the leaf certifies its key and each
certificate is issued by the next; the gateway checks the rest).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from iotid.device.errors import FleetUnavailable
from iotid.host.secureelement import SecureElement

__all__ = ["EnrollmentInfo", "b64", "install_issued", "parse_issued", "unb64"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise FleetUnavailable(f"the fleet's answer lacks {what}")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise FleetUnavailable(f"the fleet's {what} is not base64") from None


@dataclass(frozen=True)
class EnrollmentInfo:
    """What enrollment (or a renewal) established: public facts only."""

    uid: str
    epoch: int
    serial: str
    not_after: str
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    def __repr__(self) -> str:
        return f"EnrollmentInfo(uid={self.uid!r}, epoch={self.epoch}, serial={self.serial!r})"


def parse_issued(answer: dict[str, Any]) -> EnrollmentInfo:
    """Parse the fleet's ``{"certificate", "chain", ...}`` answer."""
    try:
        leaf = x509.load_pem_x509_certificate(str(answer["certificate"]).encode())
        chain = tuple(x509.load_pem_x509_certificates(str(answer["chain"]).encode()))
    except (KeyError, ValueError) as exc:
        raise FleetUnavailable(f"the fleet's certificate answer is malformed: {exc}") from None
    uid = answer.get("uid")
    epoch = answer.get("epoch")
    return EnrollmentInfo(
        uid=uid if isinstance(uid, str) else "",
        epoch=epoch if isinstance(epoch, int) else 0,
        serial=str(answer.get("serial") or format(leaf.serial_number, "x")),
        not_after=str(answer.get("not_after") or leaf.not_valid_after_utc.isoformat()),
        certificate=leaf,
        chain=chain,
    )


def install_issued(se: SecureElement, answer: dict[str, Any]) -> EnrollmentInfo:
    """Parse the answer and store leaf + chain on the card (the card refuses a leaf that does
    not certify its active key)."""
    info = parse_issued(answer)
    se.mtls.install_chain([info.certificate, *info.chain])
    return info

"""The host shim's facade: one object per secure element, one session per applet.

Scope: ``SecureElement(connection)`` (or ``SecureElement.open(target)`` for a connection or
``pcsc:READER``; card state directories open through ``iotid.connect``, which is allowed to
import the emulator) with ``se.isd``, ``se.provisioning``, ``se.attestation``, ``se.mtls``,
``se.firmware`` and ``se.rotation``, each selected when used; and the two fail-safe entry points
the rest of the device relies on: :meth:`SecureElement.credential` answers "no credential
available" (``None``) and :meth:`SecureElement.verify_firmware` answers INVALID on any bus or card
error. They never report success on an error.
Not in scope: the commands themselves (the sessions), the retry rules (``iotid.host.resilience``:
which APDUs may be re-sent) and block retransmission (the transport's T=1 layer).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography import x509

from iotid.apdu import ApduError
from iotid.host.attestation import AttestationSession
from iotid.host.errors import HostError
from iotid.host.firmware import FirmwareSession, Verdict, verify_image
from iotid.host.mtls import MtlsSession
from iotid.host.protocol import SmartCardProtocol
from iotid.host.provisioning import ProvisioningSession
from iotid.host.resilience import RetryingConnection
from iotid.host.rotation import RotationSession
from iotid.host.securitydomain import SecurityDomainSession
from iotid.transport.base import Connection, TransportError

log = logging.getLogger(__name__)

#: Everything the fail-safe entry points turn into "no" (never into "yes").
FAILURES = (TransportError, ApduError, HostError, ValueError)


@dataclass(frozen=True)
class Credential:
    """What a TLS stack needs: the chain (leaf first) and the session that signs with the SE."""

    chain: list[x509.Certificate]
    signer: MtlsSession


class SecureElement:
    def __init__(
        self, connection: Connection, *, extended: bool = True, retry: bool = True
    ) -> None:
        """``retry`` wraps the connection in bounded, safe whole-APDU retries with backoff
        (:class:`~iotid.host.resilience.RetryingConnection`); T=1 retransmits blocks below it."""
        self.connection: Connection = RetryingConnection(connection) if retry else connection
        self.protocol = SmartCardProtocol(self.connection, extended=extended)

    def __repr__(self) -> str:
        return f"SecureElement({type(self.connection).__name__})"

    @classmethod
    def open(cls, target: Connection | str, *, extended: bool = True) -> SecureElement:
        if isinstance(target, str):
            if not target.startswith("pcsc:"):
                raise ValueError("SecureElement.open takes a connection or 'pcsc:READER'")
            from iotid.transport.pcsc import PcscConnection  # noqa: PLC0415 - needs libpcsclite

            return cls(PcscConnection(target[len("pcsc:") :] or None), extended=extended)
        return cls(target, extended=extended)

    # -- sessions (each selects its applet) ---------------------------------------------------
    @property
    def isd(self) -> SecurityDomainSession:
        return SecurityDomainSession(self.protocol)

    @property
    def provisioning(self) -> ProvisioningSession:
        return ProvisioningSession(self.protocol)

    @property
    def attestation(self) -> AttestationSession:
        return AttestationSession(self.protocol)

    @property
    def mtls(self) -> MtlsSession:
        return MtlsSession(self.protocol)

    @property
    def firmware(self) -> FirmwareSession:
        return FirmwareSession(self.protocol)

    @property
    def rotation(self) -> RotationSession:
        return RotationSession(self.protocol)

    # -- fail-safe entry points ---------------------------------------------------------------
    def credential(self) -> Credential | None:
        """The mTLS credential, or None when there is none or the SE cannot be reached."""
        try:
            session = self.mtls
            chain = session.chain()
            if not chain:
                return None
            return Credential(chain, session)
        except FAILURES as exc:
            log.info("no credential available: %s", type(exc).__name__)
            return None

    def verify_firmware(self, image: Path | BinaryIO, *, signature: bytes | None = None) -> Verdict:
        """The SE's verdict on an update; INVALID on any error, never VALID."""
        return verify_image(self.protocol, image, signature=signature)

    def close(self) -> None:
        self.protocol.close()

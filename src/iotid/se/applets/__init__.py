"""The five identity applets, one module each, and the list a new card carries (ROM applets).

``provisioning`` (identity key derived from the batch master key and the UID), ``attestation``
(EAT quotes signed by an on-card attestation key), ``mtls`` (client certificate chain and
handshake signatures), ``firmware`` (streaming MCUboot/raw image verification, anti-rollback
floor), ``rotation`` (proof of continuity, retired keys decrypt-only). They share the identity key
through :class:`iotid.se.identity.IdentityStore`.
"""

from __future__ import annotations

from iotid.se.applet import Applet
from iotid.se.applets.attestation import AttestationApplet
from iotid.se.applets.firmware import FirmwareApplet
from iotid.se.applets.mtls import MtlsApplet
from iotid.se.applets.provisioning import ProvisioningApplet
from iotid.se.applets.rotation import RotationApplet

IDENTITY_APPLETS: tuple[type[Applet], ...] = (
    ProvisioningApplet,
    AttestationApplet,
    MtlsApplet,
    FirmwareApplet,
    RotationApplet,
)

__all__ = [
    "IDENTITY_APPLETS",
    "AttestationApplet",
    "FirmwareApplet",
    "MtlsApplet",
    "ProvisioningApplet",
    "RotationApplet",
]

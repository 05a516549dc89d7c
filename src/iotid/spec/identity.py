"""Vocabulary shared by the five identity applets.

Scope: the AIDs (proprietary RID ``F0`` + "iotid", ISO 7816-5 category F: not registered), the
application-specific life cycle state a personalised applet reaches, and the conventions every
applet follows: commands use CLA ``80`` (GP proprietary), an applet that is not personalised yet
answers ``6985`` to every operational command, personalisation arrives through the ISD (INSTALL
[for personalization] + STORE DATA) with secret DGIs in 8000-8FFF.
Each applet's own instructions, tags and DGIs live in its module (``provisioning``, ...).
"""

from __future__ import annotations

#: Proprietary RID: F0 || "iotid".
IOTID_RID = bytes.fromhex("F0696F746964")
#: The executable load file that holds the five applets (ROM).
ELF_AID = IOTID_RID + b"\x00"
PROVISIONING_AID = IOTID_RID + b"\x01"
ATTESTATION_AID = IOTID_RID + b"\x02"
MTLS_AID = IOTID_RID + b"\x03"
FIRMWARE_AID = IOTID_RID + b"\x04"
ROTATION_AID = IOTID_RID + b"\x05"

#: Application life cycle of an applet whose personalisation is complete (GPC 2.3.1 Table 11-5:
#: application-specific states keep b1..b3 set; we use b4 for PERSONALISED).
APP_PERSONALISED = 0x0F
#: CLA of the applets' own commands.
CLA_IOTID = 0x80

#: NVM record holding the firmware anti-rollback floor (u32 big endian). Written only by the
#: firmware applet; read by the attestation applet for its quote (a shareable-interface value).
SHARED_FIRMWARE_FLOOR_RECORD = "shared/firmware-floor"

"""The personalisation routine: one plan, written to a fresh card over SCP03 through the ISD.

Scope: authenticate with the card's current ISD keys (a fresh card: the GP test keys), then for
each identity applet INSTALL [for personalization] + STORE DATA with its DGIs (secrets encrypted
under Key-DEK inside a C-DECRYPTION session): provisioning (master key, algorithm, operator
re-key authority), attestation (key generated on the card, certified by the batch CA through the
plan's callback, certificate chain stored), mTLS (signature policy), firmware (issuance keys,
anti-rollback floor), rotation (fleet rotation authority, retention); then PUT KEY replaces the
ISD key set (the test keys are gone), and SET STATUS makes the card SECURED. The factory's line
drives this same routine at scale; there is no second one.
Not in scope: where the keys come from (``iotid.factory``), the transport.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotid.apdu import ApduError
from iotid.host import attestation, firmware, mtls, provisioning, rotation
from iotid.host.errors import HostError
from iotid.host.protocol import SmartCardProtocol
from iotid.host.securitydomain import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.spec import gp
from iotid.spec.algorithms import KeyAlg
from iotid.spec.identity import (
    ATTESTATION_AID,
    FIRMWARE_AID,
    MTLS_AID,
    PROVISIONING_AID,
    ROTATION_AID,
)
from iotid.spec.iso7816 import SW
from iotid.transport.base import Connection

PublicKey = provisioning.PublicKey
#: (on-card attestation public key, card UID) -> (attestation certificate, batch CA certificate)
Certifier = Callable[[PublicKey, bytes], tuple[x509.Certificate, x509.Certificate]]


class AlreadyPersonalisedError(HostError):
    """The card is SECURED already: personalisation happens once."""


@dataclass(frozen=True)
class PersonalisationPlan:
    alg: KeyAlg
    master_key: bytes = field(repr=False)
    operator_rekey_key: PublicKey
    certify: Certifier = field(repr=False)
    firmware_keys: tuple[PublicKey, ...]
    rotation_authority: PublicKey
    rollback_floor: int = 0
    retention: int = 2
    #: ISD keys now on the card (a fresh card: the GP test keys) and their version.
    current_isd_keys: StaticKeys = field(default_factory=StaticKeys.gp_test_keys, repr=False)
    current_isd_kvn: int = gp.TEST_KEY_VERSION
    #: The card's own ISD keys after personalisation.
    new_isd_keys: StaticKeys | None = field(default=None, repr=False)
    new_isd_kvn: int = 0x31


@dataclass(frozen=True)
class PersonalisationResult:
    uid: bytes
    attestation_certificate: x509.Certificate
    batch_certificate: x509.Certificate
    isd_kvn: int


def personalise(
    target: Connection | SmartCardProtocol,
    plan: PersonalisationPlan,
    *,
    isd_keys_for: Callable[[bytes], StaticKeys] | None = None,
) -> PersonalisationResult:
    """Personalise one card; ``isd_keys_for(uid)`` gives per-card ISD keys if the plan has none."""
    protocol = target if isinstance(target, SmartCardProtocol) else SmartCardProtocol(target)
    try:
        sd = _session(protocol, plan.current_isd_keys, plan.current_isd_kvn)
    except ApduError as exc:
        if exc.sw != SW.REFERENCED_DATA_NOT_FOUND:
            raise
        raise AlreadyPersonalisedError(
            f"the card has no ISD key set 0x{plan.current_isd_kvn:02X} any more: "
            "it is personalised already"
        ) from None
    uid = sd.get_cplc().uid
    isd = next((e for e in sd.get_status(gp.GET_STATUS_ISD) if e.aid == gp.ISD_AID), None)
    if isd is not None and isd.life_cycle in (
        gp.CardLifeCycle.SECURED,
        gp.CardLifeCycle.CARD_LOCKED,
    ):
        raise AlreadyPersonalisedError(f"card {uid.hex().upper()} is already SECURED")
    new_keys = plan.new_isd_keys or (isd_keys_for(uid) if isd_keys_for else None)
    if new_keys is None:
        raise ValueError("the plan needs new ISD keys (new_isd_keys or isd_keys_for)")

    sd.install_for_personalization(PROVISIONING_AID)
    sd.store_data(provisioning.perso_dgis(plan.master_key, plan.alg, plan.operator_rekey_key))

    # Attestation, phase 1: the key pair is generated on the card; the certificate needs its
    # public key, read from the applet before the personalisation is closed.
    sd.install_for_personalization(ATTESTATION_AID)
    sd.store_data(attestation.perso_dgis_generate(plan.alg), last=False)
    public = attestation.AttestationSession(protocol).attestation_public_key()
    cert, batch = plan.certify(public, uid)
    _check_same_key(cert, public)
    sd = _session(protocol, plan.current_isd_keys, plan.current_isd_kvn)
    sd.install_for_personalization(ATTESTATION_AID)
    sd.store_data(
        attestation.perso_dgis_certificates(
            cert.public_bytes(serialization.Encoding.DER),
            batch.public_bytes(serialization.Encoding.DER),
        )
    )

    sd.install_for_personalization(MTLS_AID)
    sd.store_data(mtls.perso_dgis(alg=plan.alg))
    sd.install_for_personalization(FIRMWARE_AID)
    sd.store_data(firmware.perso_dgis(list(plan.firmware_keys), plan.rollback_floor))
    sd.install_for_personalization(ROTATION_AID)
    sd.store_data(rotation.perso_dgis(plan.rotation_authority, plan.retention))

    # The ISD leaves the test keys behind, then the card is SECURED (GPC 2.3.1 section 5.1).
    sd.put_key(plan.new_isd_kvn, new_keys, replace_kvn=plan.current_isd_kvn)
    sd = _session(protocol, new_keys, plan.new_isd_kvn)
    if isd is not None and isd.life_cycle == gp.CardLifeCycle.OP_READY:
        sd.set_card_life_cycle(gp.CardLifeCycle.INITIALIZED)
    sd.set_card_life_cycle(gp.CardLifeCycle.SECURED)
    return PersonalisationResult(uid, cert, batch, plan.new_isd_kvn)


def _session(protocol: SmartCardProtocol, keys: StaticKeys, kvn: int) -> SecurityDomainSession:
    sd = SecurityDomainSession(protocol)
    sd.authenticate(keys, kvn=kvn, level=0x33)
    return sd


def _check_same_key(cert: x509.Certificate, public: PublicKey) -> None:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, fmt) != public.public_bytes(der, fmt):
        raise HostError("the attestation certificate does not certify the card's attestation key")

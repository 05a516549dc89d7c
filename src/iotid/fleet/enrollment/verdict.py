"""The outcome of an enrollment quote verification: :class:`Reason` and :class:`Verdict`.

Scope: the stable reason strings the operator API and the device API return (one per check of
``iotid.fleet.enrollment.verifier``, in the order the checks run), the verdict with what an
accepted quote established, and :class:`QuoteRefusedError`, how the checks inside this package
report a refusal to :class:`~iotid.fleet.enrollment.verifier.QuoteVerifier` (it never leaves
``verify``). Not covered: the checks themselves, HTTP status codes (the API slice maps them).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum, unique

from cryptography import x509

from iotid.crypto import cose
from iotid.spec.algorithms import KeyAlg

__all__ = ["PublicKey", "QuoteRefusedError", "Reason", "Verdict"]

PublicKey = cose.PublicKey


@unique
class Reason(StrEnum):
    """Why a quote was refused (or ``ok``). The strings are stable: the API returns them."""

    OK = "ok"
    # 1-2. structure and headers
    MALFORMED = "malformed"
    X5CHAIN_UNPROTECTED = "x5chain_unprotected"
    UNPROTECTED_HEADER = "unprotected_header"
    CRIT_UNSUPPORTED = "crit_unsupported"
    ALG_MISSING = "alg_missing"
    ALG_UNSUPPORTED = "alg_unsupported"
    X5CHAIN_MISSING = "x5chain_missing"
    X5CHAIN_MALFORMED = "x5chain_malformed"
    # 3. the chain
    CHAIN_UNTRUSTED = "chain_untrusted"
    CERT_NOT_YET_VALID = "cert_not_yet_valid"
    CERT_EXPIRED = "cert_expired"
    CA_CONSTRAINTS = "ca_constraints"
    KEY_USAGE = "key_usage"
    CRITICAL_EXTENSION = "critical_extension"
    REVOKED_ATTESTATION_CERT = "revoked_attestation_cert"
    REVOKED_BATCH_CA = "revoked_batch_ca"
    REVOKED_ROOT = "revoked_root"
    # 4. the signature
    ALG_KEY_MISMATCH = "alg_key_mismatch"
    BAD_SIGNATURE = "bad_signature"
    # 5. claims and nonce
    PROFILE_UNKNOWN = "profile_unknown"
    CLAIMS_MALFORMED = "claims_malformed"
    NONCE_MISMATCH = "nonce_mismatch"
    NONCE_UNKNOWN = "nonce_unknown"
    NONCE_REUSED = "nonce_reused"
    NONCE_EXPIRED = "nonce_expired"
    # 6. the manifest
    UID_NOT_IN_MANIFEST = "uid_not_in_manifest"
    ATTESTATION_CERT_MISMATCH = "attestation_cert_mismatch"
    IDENTITY_KEY_MISMATCH = "identity_key_mismatch"
    NOT_PROVISIONED = "not_provisioned"
    # 7. the registry (current key, epoch and lifecycle of an enrolled device)
    KEY_EPOCH_MISMATCH = "key_epoch_mismatch"
    DEVICE_REVOKED = "device_revoked"
    BATCH_REVOKED = "batch_revoked"
    DEVICE_RETIRED = "device_retired"
    DEVICE_ROTATING = "device_rotating"
    UID_MISMATCH = "uid_mismatch"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one verification.

    Accepted (``ok``): every field is set. Refused: ``reason`` and ``detail`` say which check
    failed and why (no secret in either); ``uid`` and ``chain`` are filled in only when the
    quote's signature had verified and its claims parsed (the refusal came from the nonce or the
    manifest), never from unauthenticated bytes. ``chain`` is (attestation certificate, batch
    CA certificate, issuance root).
    """

    reason: Reason
    detail: str
    uid: bytes | None = None
    identity_public_key: PublicKey | None = None
    identity_alg: KeyAlg | None = None
    #: True: the key equals the manifest's prediction (EC); False: an RSA batch, whose identity
    #: key nobody can predict: it is trusted through the attestation quote alone.
    identity_key_predicted: bool | None = None
    key_epoch: int | None = None
    firmware_floor: int | None = None
    #: The pending key of a rotation in progress (None outside a rotation).
    pending_identity_key: PublicKey | None = None
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reason is Reason.OK


class QuoteRefusedError(Exception):
    """A check refused the quote (internal to the package: ``verify`` turns it into a Verdict)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

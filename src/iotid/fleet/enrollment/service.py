"""The enrollment slice's rules: nonce -> quote -> verdict -> client certificate, in one
transaction; certificate renewal over the gateway is the same path bound to the caller.

Scope: :class:`EnrollmentService`.

- :meth:`~EnrollmentService.new_nonce` (operator API, no token) and
  :meth:`~EnrollmentService.new_renewal_nonce` (gateway, bound to the calling device): database
  nonces (:class:`~iotid.fleet.enrollment.dbnonces.DbNonceStore`, purposes ``enroll`` and
  ``renew``), single use, five minutes by default.
- :meth:`~EnrollmentService.enroll` / :meth:`~EnrollmentService.renew`: ONE write transaction
  holds the whole decision: the quote is verified (:class:`QuoteVerifier` against the issuance
  root of :class:`FleetKeys`; the nonce consumed in that transaction; the manifest lookup is the
  registry's record of the UID, the device row locked (``SELECT ... FOR UPDATE``), with its
  CURRENT identity key and epoch; a batch CA is revoked when its batch is or when the root's
  CRL lists it), then, accepted: the device moves ``manufactured`` -> ``enrolled`` (audited by
  ``transition_device``), its key epoch, identity key (an RSA batch's key is recorded here) and
  ``enrolled_at`` (first enrollment only) are set, the certificate and the enrollment evidence
  (the quote verbatim) inserted, ``enrollment.accepted`` and ``certificate.issued`` audited.
  Everything commits together or nothing does: a failure after the nonce was consumed rolls the
  consumption back too (the device may retry with the same quote while the nonce lives).
- Device states: ``manufactured`` enrolls; ``enrolled`` and ``active`` re-enroll (a fresh
  certificate, state unchanged: a device that lost its certificate, or a renewal);
  ``rotating`` is refused (``device_rotating``: the rotation slice's two-phase protocol issues
  the new key's certificate and completes it; a second certificate path would race it);
  ``retired`` and ``revoked`` are refused (``device_retired``, ``device_revoked``).
- Refusals raise :class:`EnrollmentRefused` (``enrollment.refused`` with the
  :class:`~iotid.fleet.enrollment.verdict.Reason` in ``reason``; 422 for a quote that is not
  well formed, 403 otherwise). A refused quote whose UID is registered (and authenticated by
  the quote's signature) appends ``enrollment.refused`` in a transaction that commits (with the
  nonce consumption, if the verifier got that far); unknown UIDs leave no trace (no
  amplification of garbage into the audit log).

Not in scope: HTTP (``api``, ``gateway``), the quote checks (``verifier``), revocation and
rotation (their slices), rate limiting.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy.orm import Session

from iotid.crypto import cose
from iotid.fleet.db import Database
from iotid.fleet.devices.service import normalize_uid, transition_device
from iotid.fleet.enrollment.dbnonces import DB_NONCE_TTL, DbNonceStore
from iotid.fleet.enrollment.quote import decode_quote
from iotid.fleet.enrollment.repository import EnrollmentRepository
from iotid.fleet.enrollment.verdict import QuoteRefusedError, Reason, Verdict
from iotid.fleet.enrollment.verifier import QuoteVerifier, RegistryCard
from iotid.fleet.errors import DomainError, InvalidInput
from iotid.fleet.faults import crash_point
from iotid.fleet.issuing import (
    CLIENT_CERT_LIFETIME,
    FleetKeys,
    certificate_sha256,
    serial_hex,
    spki_der,
    spki_sha256,
)
from iotid.fleet.models import AuditLog, Certificate, Device, DeviceState, Enrollment, utcnow
from iotid.spec.attestation import Claim
from iotid.spec.manifest import IDENTITY_ALG_NAMES

__all__ = [
    "ENROLL_PURPOSE",
    "RENEW_PURPOSE",
    "EnrollmentRefused",
    "EnrollmentResult",
    "EnrollmentService",
]

ENROLL_PURPOSE = "enroll"
RENEW_PURPOSE = "renew"
_PEM = serialization.Encoding.PEM
_ALG_BY_NAME = {name: alg for alg, name in IDENTITY_ALG_NAMES.items()}
#: Reasons about the quote's form rather than its trust: 422.
_MALFORMED = frozenset(
    {
        Reason.MALFORMED,
        Reason.X5CHAIN_UNPROTECTED,
        Reason.UNPROTECTED_HEADER,
        Reason.CRIT_UNSUPPORTED,
        Reason.ALG_MISSING,
        Reason.ALG_UNSUPPORTED,
        Reason.X5CHAIN_MISSING,
        Reason.X5CHAIN_MALFORMED,
        Reason.CLAIMS_MALFORMED,
    }
)
#: Device states that refuse enrollment and renewal, with the reason.
_REFUSED_STATES = {
    DeviceState.ROTATING: Reason.DEVICE_ROTATING,
    DeviceState.RETIRED: Reason.DEVICE_RETIRED,
    DeviceState.REVOKED: Reason.DEVICE_REVOKED,
}


class EnrollmentRefused(DomainError):  # noqa: N818 (the API's vocabulary: a refusal)
    """A quote was refused: ``enrollment.refused`` with ``reason`` (a :class:`Reason` value)."""

    CODE = "enrollment.refused"

    def __init__(self, reason: Reason, message: str) -> None:
        status = 422 if reason in _MALFORMED else 403
        super().__init__(status, self.CODE, message, extra={"reason": reason.value})
        self.reason = reason


@dataclass(frozen=True)
class EnrollmentResult:
    """An accepted enrollment or renewal: the client certificate and what a device needs."""

    uid: str
    epoch: int
    certificate: x509.Certificate
    #: The issuing CA's certificate (the chain the device presents with its certificate).
    chain: tuple[x509.Certificate, ...]
    serial: str
    not_after: dt.datetime
    #: Issuing CA then root, PEM: what the device validates the gateway with.
    gateway_ca_pem: bytes

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(_PEM).decode("ascii")

    @property
    def chain_pem(self) -> str:
        return "".join(c.public_bytes(_PEM).decode("ascii") for c in self.chain)


@dataclass
class _Seen:
    """What the manifest lookup found inside the transaction (the locked device row)."""

    device: Device | None = None


def _claimed_nonce(quote: bytes) -> bytes:
    """The nonce the quote claims to answer, read before anything is verified (the verifier
    then checks the quote, and the store whether the nonce was issued); b"" when unreadable."""
    try:
        payload = decode_quote(quote).payload
        claims = cose.decode_cbor(payload) if isinstance(payload, bytes) else None
    except (QuoteRefusedError, cose.CoseError):
        return b""
    nonce = claims.get(int(Claim.NONCE)) if isinstance(claims, dict) else None
    return nonce if isinstance(nonce, bytes) else b""


def _public_key(spki: bytes | None) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None:
    if spki is None:
        return None
    key = serialization.load_der_public_key(spki)
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("a registry identity key is EC or RSA")
    return key


class EnrollmentService:
    """Enrollment and certificate renewal for one fleet (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        keys: FleetKeys,
        clock: Callable[[], dt.datetime] = utcnow,
        *,
        cert_lifetime: dt.timedelta = CLIENT_CERT_LIFETIME,
        nonce_ttl: dt.timedelta = DB_NONCE_TTL,
    ) -> None:
        if cert_lifetime <= dt.timedelta(0):
            raise ValueError("the certificate lifetime must be positive")
        self._db = db
        self._keys = keys
        self._clock = clock
        self._lifetime = cert_lifetime
        self._enroll_nonces = DbNonceStore(db, ENROLL_PURPOSE, ttl=nonce_ttl, clock=clock)
        self._renew_nonces = DbNonceStore(db, RENEW_PURPOSE, ttl=nonce_ttl, clock=clock)
        crl = keys.root_crl
        if crl is not None and not crl.is_signature_valid(_root_key(keys.root)):
            raise ValueError("the root CRL is not signed by the issuance root")
        self._root_crl = crl
        issuing = keys.issuing.certificate
        self._chain = (issuing,)
        self._gateway_ca_pem = issuing.public_bytes(_PEM) + keys.root.public_bytes(_PEM)

    def __repr__(self) -> str:
        return f"EnrollmentService({self._db!r})"

    # -- nonces ------------------------------------------------------------------------------------
    def new_nonce(self) -> tuple[bytes, dt.datetime]:
        """A fresh enrollment nonce and its expiry."""
        return self._enroll_nonces.issue_with_expiry()

    def new_renewal_nonce(self, uid: str) -> tuple[bytes, dt.datetime]:
        """A fresh renewal nonce, usable only by device ``uid``, and its expiry."""
        return self._renew_nonces.issue_with_expiry(normalize_uid(uid))

    # -- enrollment and renewal --------------------------------------------------------------------
    def enroll(self, quote: bytes) -> EnrollmentResult:
        """Verify ``quote`` (answering an enrollment nonce) and issue a client certificate."""
        result = self._issue(quote, self._enroll_nonces, caller=None)
        crash_point("enroll.after_commit")  # committed; the certificate not yet sent
        return result

    def renew(self, uid: str, quote: bytes) -> EnrollmentResult:
        """Certificate renewal for the authenticated device ``uid``: ``quote`` must be that
        device's, for its current key, answering a renewal nonce issued to it."""
        return self._issue(quote, self._renew_nonces, caller=normalize_uid(uid))

    def _issue(self, quote: bytes, nonces: DbNonceStore, caller: str | None) -> EnrollmentResult:
        if not isinstance(quote, bytes):
            raise InvalidInput("enrollment.bad_quote", "the quote is not a byte string")
        nonce = _claimed_nonce(quote)
        refusal: EnrollmentRefused | None = None
        with self._db.transaction() as session:
            now = self._clock()
            repo = EnrollmentRepository(session)
            seen = _Seen()
            verifier = QuoteVerifier(
                self._keys.root,
                lambda uid: self._lookup(repo, seen, uid),
                lambda cert: self._revoked(repo, cert),
                nonces.bound(session, device_uid=caller),
                lambda: now,
            )
            verdict = verifier.verify(quote, nonce)
            refusal = self._refusal(verdict, seen, caller)
            if refusal is None and seen.device is not None:
                return self._accept(session, repo, seen.device, verdict, quote, now, caller)
            if refusal is None:  # pragma: no cover - an accepted verdict looked the device up
                refusal = EnrollmentRefused(Reason.UID_NOT_IN_MANIFEST, "no registry record")
            # Committed: the refusal's audit entry and the nonce consumption, if any.
            self._audit_refusal(session, repo, verdict, refusal, caller, now)
        raise refusal

    def _refusal(
        self, verdict: Verdict, seen: _Seen, caller: str | None
    ) -> EnrollmentRefused | None:
        if not verdict.ok:
            return EnrollmentRefused(verdict.reason, verdict.detail)
        uid = verdict.uid.hex().upper() if verdict.uid is not None else None
        if caller is not None and uid != caller:
            return EnrollmentRefused(
                Reason.UID_MISMATCH, f"device {caller} presented the quote of another card"
            )
        device = seen.device
        if device is None or device.uid != uid:  # pragma: no cover - the verifier looked it up
            return EnrollmentRefused(Reason.UID_NOT_IN_MANIFEST, f"card {uid} is in no manifest")
        state = DeviceState(device.state)
        if state in _REFUSED_STATES:
            return EnrollmentRefused(_REFUSED_STATES[state], f"device {uid} is {state.value}")
        return None

    def _audit_refusal(
        self,
        session: Session,
        repo: EnrollmentRepository,
        verdict: Verdict,
        refusal: EnrollmentRefused,
        caller: str | None,
        now: dt.datetime,
    ) -> None:
        """``enrollment.refused`` for a registered UID the quote's signature vouches for (or,
        in a renewal, for the authenticated caller); nothing for anything else."""
        quoted = verdict.uid.hex().upper() if verdict.uid is not None else None
        subject = caller or quoted
        if subject is None or repo.device(subject) is None:
            return
        details: dict[str, str | bool] = {
            "reason": refusal.reason.value,
            "renewal": caller is not None,
        }
        if quoted is not None and quoted != subject:
            details["quote_uid"] = quoted
        AuditLog(session).append(
            actor=f"device:{subject}",
            action="enrollment.refused",
            subject=f"device:{subject}",
            details=details,
            now=now,
        )

    def _accept(
        self,
        session: Session,
        repo: EnrollmentRepository,
        device: Device,
        verdict: Verdict,
        quote: bytes,
        now: dt.datetime,
        caller: str | None,
    ) -> EnrollmentResult:
        key, epoch = verdict.identity_public_key, verdict.key_epoch
        assert key is not None and epoch is not None  # noqa: S101 (an accepted verdict has them)
        uid = device.uid
        actor = f"device:{uid}"
        spki = spki_der(key)
        certificate = self._keys.issuing.issue_client(spki, uid, now=now, lifetime=self._lifetime)
        serial = serial_hex(certificate.serial_number)
        first = DeviceState(device.state) is DeviceState.MANUFACTURED
        if first:
            device = transition_device(
                session,
                uid,
                {DeviceState.MANUFACTURED},
                DeviceState.ENROLLED,
                actor=actor,
                details={"by": "enrollment", "certificate_serial": serial},
                now=now,
            )
            device.enrolled_at = now
        device.key_epoch = epoch
        device.identity_spki = spki
        device.updated_at = now
        fingerprint = spki_sha256(spki)
        leaf, batch_ca = verdict.chain[0], verdict.chain[1]
        repo.add_certificate(
            Certificate(
                serial=serial,
                device_id=device.id,
                der=certificate.public_bytes(serialization.Encoding.DER),
                key_epoch=epoch,
                spki_sha256=fingerprint,
                issuer_sha256=self._keys.issuing.sha256,
                not_before=certificate.not_valid_before_utc,
                not_after=certificate.not_valid_after_utc,
                created_at=now,
            )
        )
        repo.add_enrollment(
            Enrollment(
                device_id=device.id,
                quote=quote,
                attestation_cert_sha256=certificate_sha256(leaf),
                batch_ca_sha256=certificate_sha256(batch_ca),
                key_epoch=epoch,
                spki_sha256=fingerprint,
                certificate_serial=serial,
                created_at=now,
            )
        )
        audit = AuditLog(session)
        audit.append(
            actor=actor,
            action="enrollment.accepted",
            subject=f"device:{uid}",
            details={
                "certificate_serial": serial,
                "key_epoch": epoch,
                "spki_sha256": fingerprint,
                "attestation_cert_sha256": certificate_sha256(leaf),
                "batch_ca_sha256": certificate_sha256(batch_ca),
                "key_predicted": bool(verdict.identity_key_predicted),
                "first": first,
                "renewal": caller is not None,
            },
            now=now,
        )
        audit.append(
            actor=actor,
            action="certificate.issued",
            subject=f"certificate:{serial}",
            details={
                "uid": uid,
                "key_epoch": epoch,
                "spki_sha256": fingerprint,
                "issuer_sha256": self._keys.issuing.sha256,
                "not_after": certificate.not_valid_after_utc.isoformat(),
            },
            now=now,
        )
        crash_point("enroll.before_commit")  # every change made, nothing committed
        return EnrollmentResult(
            uid=uid,
            epoch=epoch,
            certificate=certificate,
            chain=self._chain,
            serial=serial,
            not_after=certificate.not_valid_after_utc,
            gateway_ca_pem=self._gateway_ca_pem,
        )

    # -- what the verifier asks --------------------------------------------------------------------
    def _lookup(self, repo: EnrollmentRepository, seen: _Seen, uid: bytes) -> RegistryCard | None:
        """The registry's record of ``uid`` (device row locked), or None (deny by default)."""
        if not isinstance(uid, bytes) or not 1 <= len(uid) <= 32:
            return None
        device = repo.lock_device(uid.hex().upper())
        if device is None:
            return None
        algorithm = _ALG_BY_NAME.get(device.batch.algorithm)
        if algorithm is None:  # pragma: no cover - the import validated the manifest
            return None
        seen.device = device
        return RegistryCard(
            uid=uid,
            identity_public_key=_public_key(device.identity_spki),
            attestation_cert_sha256=device.attestation_cert_sha256,
            algorithm=algorithm,
            key_epoch=device.key_epoch,
            device_revoked=device.revoked_at is not None
            or DeviceState(device.state) is DeviceState.REVOKED,
            batch_revoked=device.batch.revoked_at is not None,
        )

    def _revoked(self, repo: EnrollmentRepository, cert: x509.Certificate) -> bool:
        """A certificate of the quote's chain is revoked: a batch CA whose batch is revoked in
        the registry or that the root's CRL lists. The root itself: never (no CRL covers it);
        the attestation certificate: the device's state says (``device_revoked``)."""
        root = self._keys.root
        if cert == root:
            return False
        crl = self._root_crl
        if (
            crl is not None
            and cert.issuer == root.subject
            and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
        ):
            return True
        return repo.batch_ca_revoked(certificate_sha256(cert))


def _root_key(root: x509.Certificate) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    key = root.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("the issuance root's key is EC or RSA")
    return key

"""Host session of the provisioning applet (DESIGN.md section 6.1), plus the two things other
parties need: the personalisation DGIs (factory line) and the re-key TBS (operator).

Scope: :class:`ProvisioningSession` (PROVISION, GET PUBLIC KEY, GET STATE, GET REKEY CHALLENGE,
REKEY) with typed errors for the status words it understands (any other one is re-raised as
:class:`~iotid.apdu.ApduError`); :func:`perso_dgis`; :func:`rekey_tbs`.

The card answers 6985 both before personalisation and for "already provisioned" / "not
provisioned"; the session tells them apart with a GET STATE, which itself answers 6985 only
before personalisation.

The operator's side of an admin re-key: ``nonce = session.rekey_challenge()``,
``st = session.state()``, check that ``st.uid`` is the device meant, sign
``rekey_tbs(st.uid, st.rekey_counter, nonce)`` with the re-key authority key (ECDSA, SHA-256 for
P-256, SHA-384 for P-384, DER) away from the device, then ``session.rekey(signature)``.

Not covered: the wire vocabulary (``iotid.spec.provisioning``), ISD personalisation itself
(``iotid.host.securitydomain``), signing with the authority key (the operator's key store).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotid.apdu import ApduError, ApduFormatError, parse_tlvs
from iotid.host.errors import BadResponseError, HostError
from iotid.host.protocol import SmartCardProtocol
from iotid.spec import provisioning as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.identity import CLA_IOTID
from iotid.spec.iso7816 import SW
from iotid.spec.provisioning import Dgi, Ins, Tag

__all__ = [
    "AlreadyProvisionedError",
    "IdentityPublicKey",
    "NotPersonalisedError",
    "NotProvisionedError",
    "ProvisioningError",
    "ProvisioningSession",
    "ProvisioningState",
    "PublicKey",
    "RekeyRefusedError",
    "perso_dgis",
    "rekey_tbs",
]

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


_STATE_TAGS = (
    Tag.PROVISIONED,
    Tag.EPOCH,
    Tag.ALGORITHM,
    Tag.GENERATION,
    Tag.REKEY_COUNTER,
    Tag.CHALLENGE_PENDING,
    Tag.UID,
)


class ProvisioningError(HostError):
    """Base of the provisioning applet's typed errors; ``sw`` is the card's status word."""

    def __init__(self, message: str, sw: int) -> None:
        super().__init__(message)
        self.sw = sw


class NotPersonalisedError(ProvisioningError):
    """The applet has not been personalised (no master key, algorithm or re-key authority)."""


class AlreadyProvisionedError(ProvisioningError):
    """PROVISION on a provisioned card: only an operator-authorised re-key allows another."""


class NotProvisionedError(ProvisioningError):
    """The command needs an identity key, and the card has none (never provisioned, or re-keyed
    and not provisioned again)."""


class RekeyRefusedError(ProvisioningError):
    """REKEY refused: the signature does not verify (6982), or there is no valid outstanding
    challenge (6985). Nothing changed on the card."""


@dataclass(frozen=True)
class IdentityPublicKey:
    """The active identity public key and its epoch."""

    public_key: PublicKey
    epoch: int
    alg: KeyAlg

    def spki_der(self) -> bytes:
        return _spki(self.public_key)

    def pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")


@dataclass(frozen=True)
class ProvisioningState:
    """What GET STATE reports (public facts only)."""

    provisioned: bool
    epoch: int
    alg: KeyAlg
    generation: int
    rekey_counter: int
    challenge_pending: bool
    uid: bytes


def rekey_tbs(uid: bytes, counter: int, nonce: bytes) -> bytes:
    """The bytes the operator signs to authorise one re-key (``iotid.spec.provisioning``)."""
    return spec.rekey_tbs(uid, counter, nonce)


def perso_dgis(
    master_key: bytes, alg: KeyAlg, operator_public_key: PublicKey
) -> list[tuple[int, bytes]]:
    """The provisioning applet's personalisation DGIs, checked as the card will check them.

    ``operator_public_key`` is the re-key authority: EC P-256 or P-384 (an RSA key is refused).
    ValueError on bad input; messages never contain the master key.
    """
    if not spec.MASTER_KEY_MIN <= len(master_key) <= spec.MASTER_KEY_MAX:
        raise ValueError(
            f"the master key must be {spec.MASTER_KEY_MIN} to {spec.MASTER_KEY_MAX} bytes"
        )
    if alg not in spec.IDENTITY_ALGS:
        raise ValueError(f"{alg.name} is not an identity key algorithm")
    if not isinstance(operator_public_key, ec.EllipticCurvePublicKey) or (
        operator_public_key.curve.name not in spec.REKEY_AUTHORITY_HASHES
    ):
        raise ValueError("the re-key authority must be an EC P-256 or P-384 public key")
    return [
        (Dgi.IDENTITY_ALG, bytes([alg])),
        (Dgi.REKEY_AUTHORITY, _spki(operator_public_key)),
        (Dgi.MASTER_KEY, bytes(master_key)),
    ]


class ProvisioningSession:
    """The provisioning applet, as seen from the host. Selects the applet on construction."""

    def __init__(self, protocol: SmartCardProtocol) -> None:
        self.protocol = protocol
        self.protocol.select(spec.AID)

    def __repr__(self) -> str:
        return "ProvisioningSession()"

    def _send(self, ins: Ins, data: bytes = b"") -> bytes:
        return self.protocol.transmit(
            CLA_IOTID, ins, spec.P1P2_NONE, spec.P1P2_NONE, data, le=None if data else 256
        )

    def _why_6985(self, exc: ApduError, *, provisioned: bool) -> ProvisioningError:
        """Tell "not personalised" from the provisioned-state refusal (both are 6985)."""
        try:
            self._send(Ins.GET_STATE)
        except ApduError as probe:
            if probe.sw == SW.CONDITIONS_NOT_SATISFIED:
                return NotPersonalisedError("the provisioning applet is not personalised", exc.sw)
            raise
        if provisioned:
            return AlreadyProvisionedError(
                "the card is already provisioned; an operator-authorised re-key must come first",
                exc.sw,
            )
        return NotProvisionedError("the card holds no identity key (run PROVISION)", exc.sw)

    # -- commands -----------------------------------------------------------------------------
    def provision(self) -> PublicKey:
        """PROVISION: the identity key is made on the card; returns its public key."""
        try:
            der = self._send(Ins.PROVISION)
        except ApduError as exc:
            if exc.sw == SW.CONDITIONS_NOT_SATISFIED:
                raise self._why_6985(exc, provisioned=True) from None
            raise
        return _load_spki(der)

    def public_key(self) -> IdentityPublicKey:
        """GET PUBLIC KEY: the active identity public key, its epoch and algorithm."""
        try:
            data = self._send(Ins.GET_PUBLIC_KEY)
        except ApduError as exc:
            if exc.sw == SW.CONDITIONS_NOT_SATISFIED:
                raise self._why_6985(exc, provisioned=False) from None
            raise
        fields = _fields(data, (Tag.PUBLIC_KEY, Tag.EPOCH, Tag.ALGORITHM))
        return IdentityPublicKey(
            _load_spki(fields[Tag.PUBLIC_KEY]),
            _u32(fields[Tag.EPOCH]),
            _alg(fields[Tag.ALGORITHM]),
        )

    def state(self) -> ProvisioningState:
        """GET STATE."""
        try:
            data = self._send(Ins.GET_STATE)
        except ApduError as exc:
            if exc.sw == SW.CONDITIONS_NOT_SATISFIED:
                raise NotPersonalisedError(
                    "the provisioning applet is not personalised", exc.sw
                ) from None
            raise
        f = _fields(data, _STATE_TAGS)
        return ProvisioningState(
            provisioned=_flag(f[Tag.PROVISIONED]),
            epoch=_u32(f[Tag.EPOCH]),
            alg=_alg(f[Tag.ALGORITHM]),
            generation=_u32(f[Tag.GENERATION]),
            rekey_counter=_u32(f[Tag.REKEY_COUNTER]),
            challenge_pending=_flag(f[Tag.CHALLENGE_PENDING]),
            uid=f[Tag.UID],
        )

    def rekey_challenge(self) -> bytes:
        """GET REKEY CHALLENGE: a fresh card nonce (any earlier one is no longer valid)."""
        try:
            nonce = self._send(Ins.GET_REKEY_CHALLENGE)
        except ApduError as exc:
            if exc.sw == SW.CONDITIONS_NOT_SATISFIED:
                raise self._why_6985(exc, provisioned=False) from None
            raise
        if len(nonce) != spec.NONCE_LEN:
            raise BadResponseError("the re-key challenge is not 16 bytes")
        return nonce

    def rekey(self, signature: bytes) -> None:
        """REKEY with the operator's DER ECDSA signature over :func:`rekey_tbs`."""
        try:
            self._send(Ins.REKEY, signature)
        except ApduError as exc:
            if exc.sw == SW.SECURITY_STATUS_NOT_SATISFIED:
                raise RekeyRefusedError(
                    "the re-key signature does not verify for this card and challenge", exc.sw
                ) from None
            if exc.sw == SW.CONDITIONS_NOT_SATISFIED:
                why = self._why_6985(exc, provisioned=False)
                if isinstance(why, NotPersonalisedError):
                    raise why from None
                raise RekeyRefusedError(
                    "no valid re-key challenge is outstanding (or no identity key)", exc.sw
                ) from None
            if exc.sw in (SW.WRONG_DATA, SW.WRONG_LENGTH):
                raise RekeyRefusedError(
                    "the signature is not a DER ECDSA signature", exc.sw
                ) from None
            raise


# -- response parsing -------------------------------------------------------------------------
def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_spki(der: bytes) -> PublicKey:
    try:
        key = serialization.load_der_public_key(der)
    except ValueError as exc:
        raise BadResponseError("the card's public key is not SubjectPublicKeyInfo DER") from exc
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise BadResponseError("the card's public key is neither EC nor RSA")
    return key


def _fields(data: bytes, tags: tuple[Tag, ...]) -> dict[int, bytes]:
    try:
        items = parse_tlvs(data)
    except ApduFormatError as exc:
        raise BadResponseError("malformed provisioning response") from exc
    out: dict[int, bytes] = {}
    for item in items:
        if item.tag in out:
            raise BadResponseError(f"tag {item.tag:02X} appears twice")
        out[item.tag] = item.value
    missing = [t for t in tags if t not in out]
    if missing:
        raise BadResponseError(f"tag {int(missing[0]):02X} missing from the response")
    return out


def _u32(raw: bytes) -> int:
    if len(raw) != 4:
        raise BadResponseError("a counter is not 4 bytes")
    return int.from_bytes(raw, "big")


def _flag(raw: bytes) -> bool:
    if raw not in (b"\x00", b"\x01"):
        raise BadResponseError("a flag is not 00 or 01")
    return raw == b"\x01"


def _alg(raw: bytes) -> KeyAlg:
    try:
        if len(raw) != 1:
            raise ValueError
        return KeyAlg(raw[0])
    except ValueError:
        raise BadResponseError("unknown algorithm code") from None

"""The enrollment quote verifier and the in-memory nonce store, against real quotes.

Quotes come from emulated cards personalised directly (attestation applet only, the fast path of
tests/unit/se/test_attestation_applet.py: the attestation key generated on the card, certified
by a PKI made here with ``cryptography``, the identity key put in with ``IdentityStore``). Cases
a correct card cannot produce (a claim set it never writes, a header it never sets, a leaf that
is a CA) are signed in software with a genuine attestation key certified by the same batch CA:
what a compromised card could send. Every refusal is checked for its exact reason, and a valid
device is accepted by the same verifier in the same test. Hypothesis: random and mutated quotes
never raise and never verify. The factory-made cards are in
tests/integration/test_enrollment_verifier_cards.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from hypothesis import given
from hypothesis import strategies as st

from iotid.apdu import ApduError
from iotid.crypto import cose
from iotid.fleet.enrollment import (
    InMemoryNonceStore,
    NonceCapacityError,
    NonceState,
    QuoteVerifier,
    Reason,
    Verdict,
)
from iotid.host import SecurityDomainSession, SmartCardProtocol
from iotid.host.attestation import AttestationSession, perso_dgis_certificates, perso_dgis_generate
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets import attestation as attestation_applet
from iotid.se.applets.attestation import AttestationApplet
from iotid.se.identity import IdentityStore
from iotid.spec import attestation as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.attestation import Claim
from iotid.spec.iso7816 import SW
from iotid.spec.manifest import ManifestCard
from iotid.transport.loopback import LoopbackConnection

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
DER = serialization.Encoding.DER


# -- a PKI: root -> batch attestation CA -> attestation certificate -------------------------------
def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def usage(
    *, ca: bool, signature: bool | None = None, cert_sign: bool | None = None
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=(not ca) if signature is None else signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca if cert_sign is None else cert_sign,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


_DEFAULT = object()


def make_cert(
    public: Any,
    subject: x509.Name,
    issuer: x509.Name,
    issuer_key: PrivateKey,
    *,
    ca: bool,
    path_length: int | None = 0,
    constraints: Any = _DEFAULT,
    key_usage: Any = _DEFAULT,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    valid: tuple[dt.datetime, dt.datetime] = (
        NOW - dt.timedelta(hours=1),
        NOW + dt.timedelta(days=365),
    ),
) -> x509.Certificate:
    """A certificate; ``constraints`` / ``key_usage`` None leave the extension out."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
    )
    if constraints is _DEFAULT:
        constraints = x509.BasicConstraints(ca=ca, path_length=path_length if ca else None)
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    if key_usage is _DEFAULT:
        key_usage = usage(ca=ca)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA384())


@dataclass(frozen=True)
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_root(
    cn: str = "test issuance root",
    path_length: int | None = None,
    valid: tuple[dt.datetime, dt.datetime] = (
        NOW - dt.timedelta(days=1),
        NOW + dt.timedelta(days=1095),
    ),
) -> Ca:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = make_cert(
        key.public_key(), name(cn), name(cn), key, ca=True, path_length=path_length, valid=valid
    )
    return Ca(key, cert)


def make_batch(root: Ca, cn: str = "test batch CA", **kw: Any) -> Ca:
    key = ec.generate_private_key(ec.SECP384R1())
    valid = (NOW - dt.timedelta(hours=2), NOW + dt.timedelta(days=2 * 365))
    kw.setdefault("valid", valid)
    return Ca(
        key, make_cert(key.public_key(), name(cn), root.cert.subject, root.key, ca=True, **kw)
    )


ROOT = make_root()
BATCH = make_batch(ROOT)


# -- devices --------------------------------------------------------------------------------------
def _isd(card: Card) -> SecurityDomainSession:
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(spec.AID)
    return sd


def _session(card: Card) -> AttestationSession:
    return AttestationSession(SmartCardProtocol(LoopbackConnection(card)))


@dataclass
class Device:
    """An emulated card: attestation applet personalised, identity key provisioned."""

    card: Card
    leaf: x509.Certificate
    batch: x509.Certificate
    identity: PrivateKey

    @property
    def uid(self) -> bytes:
        return self.card.uid

    def quote(self, nonce: bytes) -> bytes:
        return _session(self.card).attest(nonce)

    def manifest_card(self) -> ManifestCard:
        public = self.identity.public_key()
        alg = (
            KeyAlg.RSA_2048
            if isinstance(public, rsa.RSAPublicKey)
            else {256: KeyAlg.EC_P256, 384: KeyAlg.EC_P384}[public.key_size]
        )
        fingerprint = hashlib.sha256(self.leaf.public_bytes(DER)).hexdigest()
        return ManifestCard(self.uid, None if alg.is_rsa else public, fingerprint, alg)


def new_device(
    batch: Ca = BATCH,
    *,
    att_alg: KeyAlg = KeyAlg.EC_P256,
    identity: PrivateKey | None = None,
    **leaf_kw: Any,
) -> Device:
    card = Card.create(None, applets=[AttestationApplet])
    _isd(card).store_data(perso_dgis_generate(att_alg), last=False)
    public = _session(card).attestation_public_key()
    leaf = make_cert(
        public,
        name(f"attestation {card.uid.hex()}"),
        batch.cert.subject,
        batch.key,
        ca=False,
        **leaf_kw,
    )
    _isd(card).store_data(
        perso_dgis_certificates(leaf.public_bytes(DER), batch.cert.public_bytes(DER))
    )
    identity = identity or ec.generate_private_key(ec.SECP256R1())
    with card.nvm.transaction():
        IdentityStore(card.nvm, card.keys).provision(identity)
    return Device(card, leaf, batch.cert, identity)


@dataclass
class SoftDevice:
    """A genuine attestation key held in software (a compromised card): signs any claims."""

    uid: bytes
    key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate
    identity: ec.EllipticCurvePrivateKey
    batch: x509.Certificate = BATCH.cert

    def claims(self, nonce: bytes) -> dict[int, Any]:
        return {
            Claim.NONCE: nonce,
            Claim.UEID: spec.ueid_for_uid(self.uid),
            Claim.CNF: {spec.CNF_COSE_KEY: cose.cose_key(self.identity.public_key())},
            Claim.PROFILE: spec.PROFILE,
            Claim.UID: self.uid,
            Claim.PROVISIONED: True,
            Claim.KEY_EPOCH: 1,
            Claim.FIRMWARE_FLOOR: 0,
            Claim.IDENTITY_ALG: int(KeyAlg.EC_P256),
        }

    def protected(self) -> dict[int, Any]:
        chain = [self.leaf.public_bytes(DER), self.batch.public_bytes(DER)]
        return {cose.HeaderLabel.ALG: cose.CoseAlg.ES256, cose.HeaderLabel.X5CHAIN: chain}

    def quote(
        self,
        nonce: bytes,
        *,
        claims: dict[int, Any] | None = None,
        protected: dict[int, Any] | None = None,
        unprotected: dict[int, Any] | None = None,
        payload: bytes | None = None,
        hash_alg: hashes.HashAlgorithm | None = None,
    ) -> bytes:
        """Sign the given (or the genuine) protected header and claims with the leaf key."""
        header = self.protected() if protected is None else protected
        body = cbor2.dumps(self.claims(nonce) if claims is None else claims, canonical=True)
        return assemble(
            header, body if payload is None else payload, self.key, unprotected, hash_alg
        )

    def manifest_card(self) -> ManifestCard:
        fingerprint = hashlib.sha256(self.leaf.public_bytes(DER)).hexdigest()
        return ManifestCard(self.uid, self.identity.public_key(), fingerprint, KeyAlg.EC_P256)


def assemble(
    protected: dict[int, Any],
    payload: bytes,
    key: PrivateKey,
    unprotected: dict[int, Any] | None = None,
    hash_alg: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A tagged COSE_Sign1 built by hand (any header, even without an algorithm)."""
    protected_bytes = cose.encode_protected(protected)
    tbs = cose.sig_structure(protected_bytes, payload)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest = hash_alg or (hashes.SHA384() if key.key_size == 384 else hashes.SHA256())
        size = (key.key_size + 7) // 8
        signature = cose.ecdsa_der_to_raw(key.sign(tbs, ec.ECDSA(digest)), size)
    else:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        signature = key.sign(tbs, pss, hashes.SHA256())
    body = [protected_bytes, unprotected or {}, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(cose.SIGN1_TAG, body), canonical=True)


def soft_device(batch: Ca = BATCH, **leaf_kw: Any) -> SoftDevice:
    key = ec.generate_private_key(ec.SECP256R1())
    uid = secrets.token_bytes(10)
    leaf = make_cert(
        key.public_key(),
        name(f"soft {uid.hex()}"),
        batch.cert.subject,
        batch.key,
        ca=False,
        **leaf_kw,
    )
    return SoftDevice(uid, key, leaf, ec.generate_private_key(ec.SECP256R1()), batch.cert)


# -- the fleet side -------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: dt.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class Fleet:
    verifier: QuoteVerifier
    nonces: InMemoryNonceStore
    clock: Clock
    manifest: dict[bytes, ManifestCard]

    def check(self, device: Device | SoftDevice, **quote_kw: Any) -> Verdict:
        nonce = self.nonces.issue(device.uid.hex().upper())
        return self.verifier.verify(device.quote(nonce, **quote_kw), nonce)

    def accepts(self, device: Device | SoftDevice) -> Verdict:
        verdict = self.check(device)
        assert verdict.ok, (verdict.reason, verdict.detail)
        assert verdict.reason is Reason.OK and verdict.uid == device.uid
        return verdict

    def refuses(self, quote: bytes, nonce: bytes, reason: Reason) -> Verdict:
        verdict = self.verifier.verify(quote, nonce)
        assert not verdict.ok
        assert verdict.reason is reason, (verdict.reason, verdict.detail)
        assert verdict.identity_public_key is None and verdict.key_epoch is None
        return verdict


def fleet(
    *devices: Device | SoftDevice,
    root: x509.Certificate = ROOT.cert,
    revoked: Callable[[x509.Certificate], bool] = lambda cert: False,
    lookup: Callable[[bytes], ManifestCard | None] | None = None,
) -> Fleet:
    clock = Clock()
    nonces = InMemoryNonceStore(clock)
    manifest = {d.uid: d.manifest_card() for d in devices}
    verifier = QuoteVerifier(root, lookup or manifest.get, revoked, nonces, clock)
    return Fleet(verifier, nonces, clock, manifest)


@pytest.fixture(scope="module")
def device() -> Device:
    return new_device()


@pytest.fixture(scope="module")
def soft() -> SoftDevice:
    return soft_device()


# -- accepted -------------------------------------------------------------------------------------
@pytest.mark.parametrize("att_alg", [KeyAlg.EC_P256, KeyAlg.EC_P384, KeyAlg.RSA_2048])
def test_genuine_quote_accepted_with_what_it_attests(att_alg: KeyAlg) -> None:
    dev = new_device(att_alg=att_alg)
    f = fleet(dev)
    verdict = f.accepts(dev)
    assert verdict.identity_public_key == dev.identity.public_key()
    assert verdict.identity_alg is KeyAlg.EC_P256 and verdict.identity_key_predicted is True
    assert (verdict.key_epoch, verdict.firmware_floor, verdict.pending_identity_key) == (1, 0, None)
    assert verdict.chain == (dev.leaf, BATCH.cert, ROOT.cert)
    assert dev.uid.hex().upper() in verdict.detail


def test_rsa_identity_accepted_without_a_predicted_key() -> None:
    dev = new_device(att_alg=KeyAlg.EC_P384, identity=rsa.generate_private_key(65537, 2048))
    f = fleet(dev)
    assert f.manifest[dev.uid].identity_public_key is None
    verdict = f.accepts(dev)
    assert verdict.identity_alg is KeyAlg.RSA_2048 and verdict.identity_key_predicted is False
    assert verdict.identity_public_key == dev.identity.public_key()
    assert "not predictable" in verdict.detail


# -- 1-2. structure and headers -------------------------------------------------------------------
def _reencode(quote: bytes, edit: Callable[[list[Any]], Any]) -> bytes:
    """Decode a quote, let ``edit`` change its four elements, encode again (canonical)."""
    tag = cbor2.loads(quote)
    body = list(tag.value)
    out = edit(body)
    return cbor2.dumps(cbor2.CBORTag(cose.SIGN1_TAG, body) if out is None else out, canonical=True)


def _protected(quote: bytes) -> dict[int, Any]:
    return dict(cbor2.loads(cbor2.loads(quote).value[0]))


def test_malformed_quotes(device: Device) -> None:
    f = fleet(device)
    nonce = f.nonces.issue()
    quote = device.quote(nonce)
    untagged = _reencode(quote, lambda body: body)
    indefinite = b"\xd2\x9f" + b"".join(cbor2.dumps(x) for x in cbor2.loads(quote).value) + b"\xff"
    for bad in (
        b"",
        b"\xd2",
        secrets.token_bytes(40),
        untagged,
        quote + b"\x00",
        indefinite,
        cbor2.dumps(cbor2.CBORTag(98, cbor2.loads(quote).value)),
        b"\xd2" + cbor2.dumps(list(cbor2.loads(quote).value)[:3]),
        bytes(spec.CERT_MAX_LEN * 3),
        "not bytes",
    ):
        f.refuses(bad, nonce, Reason.MALFORMED)  # type: ignore[arg-type]
    assert f.verifier.verify(quote, nonce).ok  # the nonce was never consumed by garbage


def test_x5chain_in_the_unprotected_header_is_refused(device: Device) -> None:
    f = fleet(device)
    nonce = f.nonces.issue()
    quote = device.quote(nonce)
    chain = _protected(quote)[cose.HeaderLabel.X5CHAIN]

    def copied(body: list[Any]) -> None:  # still signed as it was: the signature verifies
        body[1] = {cose.HeaderLabel.X5CHAIN: chain}

    def moved(body: list[Any]) -> None:
        protected = _protected(quote)
        del protected[cose.HeaderLabel.X5CHAIN]
        body[0] = cose.encode_protected(protected)
        body[1] = {cose.HeaderLabel.X5CHAIN: chain}

    copy = _reencode(quote, copied)
    message = cose.decode_cbor(copy).value
    tbs = cose.sig_structure(message[0], message[2])
    key = device.leaf.public_key()
    assert cose.verify_signature(cose.CoseAlg.ES256, key, tbs, message[3])  # type: ignore[arg-type]
    f.refuses(copy, nonce, Reason.X5CHAIN_UNPROTECTED)
    f.refuses(_reencode(quote, moved), nonce, Reason.X5CHAIN_UNPROTECTED)
    assert f.verifier.verify(quote, nonce).ok


def test_other_unprotected_parameters_are_refused(device: Device) -> None:
    f = fleet(device)
    nonce = f.nonces.issue()
    quote = device.quote(nonce)
    kid = _reencode(quote, lambda body: body.__setitem__(1, {cose.HeaderLabel.KID: b"k"}))
    f.refuses(kid, nonce, Reason.UNPROTECTED_HEADER)
    assert f.verifier.verify(quote, nonce).ok


def test_protected_header_refusals(soft: SoftDevice) -> None:
    f = fleet(soft)
    nonce = f.nonces.issue()
    genuine = soft.protected()
    chain = genuine[cose.HeaderLabel.X5CHAIN]
    leaf_der, ca_der = chain
    cases: list[tuple[dict[int, Any], Reason]] = [
        ({**genuine, cose.HeaderLabel.CRIT: [cose.HeaderLabel.X5CHAIN]}, Reason.CRIT_UNSUPPORTED),
        ({cose.HeaderLabel.X5CHAIN: chain}, Reason.ALG_MISSING),
        ({**genuine, cose.HeaderLabel.ALG: -8}, Reason.ALG_UNSUPPORTED),  # EdDSA
        ({**genuine, cose.HeaderLabel.ALG: "ES256"}, Reason.ALG_UNSUPPORTED),
        ({cose.HeaderLabel.ALG: cose.CoseAlg.ES256}, Reason.X5CHAIN_MISSING),
        ({**genuine, cose.HeaderLabel.X5CHAIN: leaf_der}, Reason.X5CHAIN_MALFORMED),
        ({**genuine, cose.HeaderLabel.X5CHAIN: [leaf_der]}, Reason.X5CHAIN_MALFORMED),
        (
            {**genuine, cose.HeaderLabel.X5CHAIN: [*chain, ROOT.cert.public_bytes(DER)]},
            Reason.X5CHAIN_MALFORMED,
        ),
        ({**genuine, cose.HeaderLabel.X5CHAIN: [leaf_der, ca_der[:-9]]}, Reason.X5CHAIN_MALFORMED),
        ({**genuine, cose.HeaderLabel.X5CHAIN: [leaf_der, "text"]}, Reason.X5CHAIN_MALFORMED),
    ]
    for protected, reason in cases:
        f.refuses(soft.quote(nonce, protected=protected), nonce, reason)
    assert f.verifier.verify(soft.quote(nonce), nonce).ok


# -- 3. the chain ---------------------------------------------------------------------------------
def test_wrong_root_is_untrusted(device: Device) -> None:
    impostor = make_root()  # same name, another key
    other = make_root("another root")
    for root in (impostor, other):
        f = fleet(device, root=root.cert)
        nonce = f.nonces.issue()
        verdict = f.refuses(device.quote(nonce), nonce, Reason.CHAIN_UNTRUSTED)
        assert "batch CA" in verdict.detail and verdict.uid is None and verdict.chain == ()
    fleet(device).accepts(device)


def test_leaf_from_another_ca_is_untrusted(device: Device) -> None:
    rogue = make_batch(make_root(), cn=BATCH.cert.subject.rfc4514_string()[3:])
    dev = new_device(rogue)
    f = fleet(dev, device)
    nonce = f.nonces.issue()
    quote = dev.quote(nonce)
    f.refuses(quote, nonce, Reason.CHAIN_UNTRUSTED)
    # A genuine batch CA certificate next to the rogue leaf does not help either.
    swapped = _reencode(
        quote,
        lambda body: body.__setitem__(
            0,
            cose.encode_protected(
                {
                    **_protected(quote),
                    cose.HeaderLabel.X5CHAIN: [
                        dev.leaf.public_bytes(DER),
                        BATCH.cert.public_bytes(DER),
                    ],
                }
            ),
        ),
    )
    f.refuses(swapped, nonce, Reason.CHAIN_UNTRUSTED)
    f.accepts(device)


def _at(minutes: int = 0, days: int = 0) -> dt.datetime:
    return NOW + dt.timedelta(minutes=minutes, days=days)


@pytest.fixture(scope="module")
def dated() -> tuple[Ca, Device, Device]:
    """A hierarchy where each certificate is the only one out of its dates at some moment:
    not before: leaf -60 min, batch CA -50 min, root -30 min; not after: short leaf +5 days,
    root +10 days, batch CA +20 days, long leaf +30 days (a CA may sign past its own end)."""
    root = make_root(valid=(_at(-30), _at(days=10)))
    batch = make_batch(root, valid=(_at(-50), _at(days=20)))
    short = new_device(batch, valid=(_at(-60), _at(days=5)))
    long = new_device(batch, valid=(_at(-60), _at(days=30)))
    return root, short, long


@pytest.mark.parametrize(
    ("moment", "which", "reason", "who"),
    [
        (_at(-70), "short", Reason.CERT_NOT_YET_VALID, "attestation certificate"),
        (_at(-55), "short", Reason.CERT_NOT_YET_VALID, "batch CA"),
        (_at(-40), "short", Reason.CERT_NOT_YET_VALID, "issuance root"),
        (_at(days=6), "short", Reason.CERT_EXPIRED, "attestation certificate"),
        (_at(days=12), "long", Reason.CERT_EXPIRED, "issuance root"),
        (_at(days=25), "long", Reason.CERT_EXPIRED, "batch CA"),
        (_at(days=31), "long", Reason.CERT_EXPIRED, "attestation certificate"),
    ],
)
def test_validity_dates_of_each_certificate_at_the_clock(
    dated: tuple[Ca, Device, Device], moment: dt.datetime, which: str, reason: Reason, who: str
) -> None:
    root, short, long = dated
    dev = short if which == "short" else long
    f = fleet(short, long, root=root.cert)
    nonce = f.nonces.issue()
    quote = dev.quote(nonce)
    f.clock.now = moment
    verdict = f.refuses(quote, nonce, reason)
    assert who in verdict.detail
    f.clock.now = NOW
    assert f.verifier.verify(quote, nonce).ok  # the same quote, the right time: accepted


def test_card_refuses_a_batch_ca_without_basic_constraints() -> None:
    """Our applet refuses such a CA at personalisation (defence in depth); the fleet must not
    rely on that, hence the relaxed card in the next test."""
    bad = make_batch(ROOT, constraints=None)
    with pytest.raises(ApduError) as err:
        new_device(bad)
    assert err.value.sw == SW.WRONG_DATA


@pytest.mark.parametrize(
    "bad_ca",
    [
        {"constraints": None},
        {"constraints": x509.BasicConstraints(ca=False, path_length=None)},
    ],
    ids=["missing", "not-a-ca"],
)
def test_batch_ca_basic_constraints(
    device: Device, monkeypatch: pytest.MonkeyPatch, bad_ca: dict[str, Any]
) -> None:
    bad = make_batch(ROOT, **bad_ca)
    with monkeypatch.context() as mp:  # a card whose applet does not check the batch CA
        mp.setattr(attestation_applet, "_check_ca", lambda cert: cert)
        dev = new_device(bad)
    f = fleet(dev, device)
    nonce = f.nonces.issue()
    verdict = f.refuses(dev.quote(nonce), nonce, Reason.CA_CONSTRAINTS)
    assert "batch CA" in verdict.detail
    f.accepts(device)


def test_root_path_length_is_respected() -> None:
    root0 = make_root(path_length=0)  # no intermediate CA may follow it, a batch CA does
    batch0 = make_batch(root0)
    dev = new_device(batch0)
    f = fleet(dev, root=root0.cert)
    nonce = f.nonces.issue()
    verdict = f.refuses(dev.quote(nonce), nonce, Reason.CA_CONSTRAINTS)
    assert "issuance root" in verdict.detail and "allows 0" in verdict.detail
    root1 = make_root(path_length=1)
    ok = new_device(make_batch(root1))
    fleet(ok, root=root1.cert).accepts(ok)


def test_leaf_that_is_a_ca_is_refused(soft: SoftDevice) -> None:
    rogue = soft_device(constraints=x509.BasicConstraints(ca=True, path_length=None))
    f = fleet(rogue, soft)
    nonce = f.nonces.issue()
    f.refuses(rogue.quote(nonce), nonce, Reason.CA_CONSTRAINTS)
    f.accepts(soft)


def test_key_usage(device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    no_ku_batch = make_batch(ROOT, key_usage=None)  # the applet accepts a CA without keyUsage
    refused: list[Device | SoftDevice] = [
        new_device(no_ku_batch),
        new_device(key_usage=None),  # a leaf without keyUsage
    ]
    with monkeypatch.context() as mp:  # keyUsage without keyCertSign: a lax card
        mp.setattr(attestation_applet, "_check_ca", lambda cert: cert)
        refused.append(new_device(make_batch(ROOT, key_usage=usage(ca=True, cert_sign=False))))
    refused.append(soft_device(key_usage=usage(ca=False, signature=False)))  # a card refuses it
    for dev in refused:
        f = fleet(dev, device)
        nonce = f.nonces.issue()
        f.refuses(dev.quote(nonce), nonce, Reason.KEY_USAGE)
        f.accepts(device)


def test_unknown_critical_extension(device: Device) -> None:
    ext = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    dev = new_device(extra=((ext, True),))
    f = fleet(dev, device)
    nonce = f.nonces.issue()
    f.refuses(dev.quote(nonce), nonce, Reason.CRITICAL_EXTENSION)
    f.accepts(device)
    ok = new_device(extra=((ext, False),))  # non-critical: ignored (RFC 5280 §4.2)
    fleet(ok).accepts(ok)


@pytest.mark.parametrize(
    ("which", "reason"),
    [
        ("leaf", Reason.REVOKED_ATTESTATION_CERT),
        ("batch", Reason.REVOKED_BATCH_CA),
        ("root", Reason.REVOKED_ROOT),
    ],
)
def test_revocation_of_every_certificate(device: Device, which: str, reason: Reason) -> None:
    other_batch = make_batch(ROOT, cn="another batch CA")
    other = new_device(other_batch)
    target = {"leaf": device.leaf, "batch": BATCH.cert, "root": ROOT.cert}[which]
    asked: list[x509.Certificate] = []

    def revoked(cert: x509.Certificate) -> bool:
        asked.append(cert)
        return cert == target

    f = fleet(device, other, revoked=revoked)
    nonce = f.nonces.issue()
    f.refuses(device.quote(nonce), nonce, reason)
    asked.clear()
    if which == "root":
        f.refuses(other.quote(nonce), nonce, reason)
        return
    f.accepts(other)  # a valid device, another batch, same root: every certificate was asked
    assert asked == [other.leaf, other_batch.cert, ROOT.cert]


def test_revocation_callback_failure_propagates(device: Device) -> None:
    def outage(cert: x509.Certificate) -> bool:
        raise RuntimeError("database unreachable")

    f = fleet(device, revoked=outage)
    nonce = f.nonces.issue()
    with pytest.raises(RuntimeError, match="unreachable"):
        f.verifier.verify(device.quote(nonce), nonce)


# -- 4. the signature -----------------------------------------------------------------------------
def test_forged_signatures(device: Device, soft: SoftDevice) -> None:
    f = fleet(device, soft)
    nonce = f.nonces.issue()
    quote = device.quote(nonce)

    def flip(body: list[Any]) -> None:
        body[3] = body[3][:-1] + bytes([body[3][-1] ^ 1])

    f.refuses(_reencode(quote, flip), nonce, Reason.BAD_SIGNATURE)
    # Claims changed after signing (another identity key for the same card).
    claims = cbor2.loads(cbor2.loads(quote).value[2])
    claims[Claim.CNF] = {
        spec.CNF_COSE_KEY: cose.cose_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    }
    forged = _reencode(quote, lambda body: body.__setitem__(2, cbor2.dumps(claims, canonical=True)))
    f.refuses(forged, nonce, Reason.BAD_SIGNATURE)
    # Signed by another key, under the card's genuine chain.
    thief = dataclasses.replace(soft, key=ec.generate_private_key(ec.SECP256R1()))
    f.refuses(
        thief.quote(nonce, protected=_protected(quote), claims=claims), nonce, Reason.BAD_SIGNATURE
    )
    # The algorithm does not fit the leaf key (ES384 header, P-256 key).
    es384 = {**soft.protected(), cose.HeaderLabel.ALG: cose.CoseAlg.ES384}
    quote384 = soft.quote(nonce, protected=es384, hash_alg=hashes.SHA384())
    f.refuses(quote384, nonce, Reason.ALG_KEY_MISMATCH)
    assert f.verifier.verify(quote, nonce).ok


# -- 5. claims and nonce --------------------------------------------------------------------------
def test_claim_refusals(soft: SoftDevice) -> None:
    f = fleet(soft)
    nonce = f.nonces.issue()
    base = soft.claims(nonce)
    other_key = ec.generate_private_key(ec.SECP384R1()).public_key()
    cases: list[tuple[dict[int, Any], Reason]] = [
        ({**base, Claim.PROFILE: "tag:example.com,2026:other"}, Reason.PROFILE_UNKNOWN),
        ({k: v for k, v in base.items() if k != Claim.PROFILE}, Reason.PROFILE_UNKNOWN),
        ({k: v for k, v in base.items() if k != Claim.UID}, Reason.CLAIMS_MALFORMED),
        ({**base, Claim.UID: base[Claim.UID].hex()}, Reason.CLAIMS_MALFORMED),
        ({**base, Claim.UEID: spec.ueid_for_uid(b"another")}, Reason.CLAIMS_MALFORMED),
        ({**base, Claim.NONCE: b"short"}, Reason.CLAIMS_MALFORMED),
        ({**base, Claim.KEY_EPOCH: -1}, Reason.CLAIMS_MALFORMED),
        ({**base, Claim.KEY_EPOCH: True}, Reason.CLAIMS_MALFORMED),
        ({**base, Claim.PROVISIONED: 1}, Reason.CLAIMS_MALFORMED),
        ({**base, Claim.IDENTITY_ALG: int(KeyAlg.AES_128)}, Reason.CLAIMS_MALFORMED),
        ({**base, Claim.IDENTITY_ALG: int(KeyAlg.EC_P384)}, Reason.CLAIMS_MALFORMED),
        (
            {**base, Claim.CNF: {spec.CNF_COSE_KEY: cose.cose_key(other_key)}},
            Reason.CLAIMS_MALFORMED,
        ),
        (
            {**base, Claim.CNF: {spec.CNF_COSE_KEY: {1: 2, -1: 1, -2: b"x", -3: b"y"}}},
            Reason.CLAIMS_MALFORMED,
        ),
        ({**base, Claim.PENDING_IDENTITY_KEY: b"not a key"}, Reason.CLAIMS_MALFORMED),
    ]
    for claims, reason in cases:
        verdict = f.refuses(soft.quote(nonce, claims=claims), nonce, reason)
        assert verdict.uid is None  # claims that do not parse name nobody
    for payload in (b"\xa1\x01", cbor2.dumps([1, 2]), b"\xa2\x01\x01\x01\x02"):
        f.refuses(soft.quote(nonce, payload=payload), nonce, Reason.CLAIMS_MALFORMED)
    assert f.verifier.verify(soft.quote(nonce), nonce).ok


def test_nonce_refusals(device: Device) -> None:
    f = fleet(device)
    nonce = f.nonces.issue()
    quote = device.quote(nonce)
    other = f.nonces.issue()
    verdict = f.refuses(quote, other, Reason.NONCE_MISMATCH)
    assert verdict.uid == device.uid and verdict.chain == (device.leaf, BATCH.cert, ROOT.cert)
    f.refuses(quote, "text", Reason.NONCE_MISMATCH)  # type: ignore[arg-type]
    stranger = secrets.token_bytes(32)  # never issued by this fleet
    f.refuses(device.quote(stranger), stranger, Reason.NONCE_UNKNOWN)
    assert f.verifier.verify(quote, nonce).ok
    f.refuses(quote, nonce, Reason.NONCE_REUSED)  # replay
    late = f.nonces.issue()
    late_quote = device.quote(late)
    f.clock.now = NOW + f.nonces.ttl + dt.timedelta(seconds=1)
    f.refuses(late_quote, late, Reason.NONCE_EXPIRED)
    f.accepts(device)  # a fresh nonce at the new time


# -- 6. the manifest ------------------------------------------------------------------------------
def test_uid_not_in_manifest(device: Device) -> None:
    stranger = new_device()
    f = fleet(device)
    nonce = f.nonces.issue()
    verdict = f.refuses(stranger.quote(nonce), nonce, Reason.UID_NOT_IN_MANIFEST)
    assert verdict.uid == stranger.uid
    f.refuses(stranger.quote(nonce), nonce, Reason.NONCE_REUSED)  # consumed: genuine quote
    f.accepts(device)
    # A lookup that answers another card's entry is not taken for this one.
    g = fleet(device, lookup=lambda uid: f.manifest[device.uid])
    nonce = g.nonces.issue()
    g.refuses(stranger.quote(nonce), nonce, Reason.UID_NOT_IN_MANIFEST)
    g.accepts(device)


def test_identity_key_not_the_manifests(device: Device) -> None:
    f = fleet(device)
    entry = f.manifest[device.uid]
    twin = new_device()
    other_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    f.manifest[twin.uid] = dataclasses.replace(twin.manifest_card(), identity_public_key=other_key)
    nonce = f.nonces.issue()
    verdict = f.refuses(twin.quote(nonce), nonce, Reason.IDENTITY_KEY_MISMATCH)
    assert "epoch 1" in verdict.detail
    f.manifest[twin.uid] = dataclasses.replace(twin.manifest_card(), algorithm=KeyAlg.EC_P384)
    nonce = f.nonces.issue()
    f.refuses(twin.quote(nonce), nonce, Reason.IDENTITY_KEY_MISMATCH)
    f.manifest[twin.uid] = dataclasses.replace(twin.manifest_card(), identity_public_key=None)
    nonce = f.nonces.issue()
    f.refuses(twin.quote(nonce), nonce, Reason.IDENTITY_KEY_MISMATCH)  # EC: a key is required
    assert f.manifest[device.uid] == entry
    f.accepts(device)


def test_attestation_certificate_not_the_manifests(device: Device) -> None:
    f = fleet(device)
    twin = new_device()
    f.manifest[twin.uid] = dataclasses.replace(
        twin.manifest_card(), attestation_cert_sha256=hashlib.sha256(b"other").hexdigest()
    )
    nonce = f.nonces.issue()
    f.refuses(twin.quote(nonce), nonce, Reason.ATTESTATION_CERT_MISMATCH)
    f.accepts(device)


def test_compromised_card_claiming_another_uid(device: Device, soft: SoftDevice) -> None:
    """A genuine attestation key signing another card's UID and key: the manifest ties each
    UID to the attestation certificate the factory issued for it."""
    f = fleet(device, soft)
    nonce = f.nonces.issue()
    claims = soft.claims(nonce)
    claims[Claim.UID] = device.uid
    claims[Claim.UEID] = spec.ueid_for_uid(device.uid)
    claims[Claim.CNF] = {spec.CNF_COSE_KEY: cose.cose_key(device.identity.public_key())}
    f.refuses(soft.quote(nonce, claims=claims), nonce, Reason.ATTESTATION_CERT_MISMATCH)
    f.accepts(device)


def test_not_provisioned(soft: SoftDevice) -> None:
    f = fleet(soft)
    nonce = f.nonces.issue()
    claims = {**soft.claims(nonce), Claim.PROVISIONED: False}
    f.refuses(soft.quote(nonce, claims=claims), nonce, Reason.NOT_PROVISIONED)
    f.accepts(soft)


def test_pending_identity_key_is_reported(soft: SoftDevice) -> None:
    f = fleet(soft)
    nonce = f.nonces.issue()
    pending = ec.generate_private_key(ec.SECP256R1()).public_key()
    claims = {
        **soft.claims(nonce),
        Claim.PENDING_IDENTITY_KEY: cose.cose_key(pending),
        Claim.KEY_EPOCH: 1,
    }
    verdict = f.verifier.verify(soft.quote(nonce, claims=claims), nonce)
    assert verdict.ok and verdict.pending_identity_key == pending


def test_reason_strings_are_stable() -> None:
    assert str(Reason.X5CHAIN_UNPROTECTED) == "x5chain_unprotected"
    assert Reason.REVOKED_BATCH_CA.value == "revoked_batch_ca"
    assert len({r.value for r in Reason}) == len(Reason)
    assert all(r.value == r.name.lower() for r in Reason)


# -- Hypothesis: random and mutated quotes never raise and never verify ---------------------------
class AlwaysFresh:
    """A nonce store that takes every nonce: nothing but the quote itself can refuse."""

    def issue(self, device_hint: str | None = None) -> bytes:
        return secrets.token_bytes(32)

    def consume(self, nonce: bytes, now: dt.datetime) -> NonceState:
        return NonceState.OK


@pytest.fixture(scope="module")
def strict() -> tuple[QuoteVerifier, bytes, bytes]:
    dev = new_device()
    nonce = secrets.token_bytes(32)
    quote = dev.quote(nonce)
    manifest = {dev.uid: dev.manifest_card()}
    verifier = QuoteVerifier(ROOT.cert, manifest.get, lambda c: False, AlwaysFresh(), Clock())
    assert verifier.verify(quote, nonce).ok  # and again: AlwaysFresh never says reused
    return verifier, quote, nonce


@given(data=st.binary(max_size=2048))
def test_random_bytes_never_verify(strict: tuple[QuoteVerifier, bytes, bytes], data: bytes) -> None:
    verifier, _, nonce = strict
    verdict = verifier.verify(data, nonce)
    assert not verdict.ok and verdict.reason is not Reason.OK


_MUTATION = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=1, max_value=16),
)


def _mutate(quote: bytes, ops: list[tuple[str, int, int, int]]) -> bytes:
    data = bytearray(quote)
    for op, where, value, length in ops:
        pos = where % max(1, len(data))
        if op == "flip" and data:
            data[pos] ^= 1 << (value % 8)
        elif op == "set" and data:
            data[pos] = value
        elif op == "insert":
            data[pos:pos] = bytes([value]) * length
        elif op == "delete":
            del data[pos : pos + length]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@given(ops=st.lists(_MUTATION, min_size=1, max_size=4))
def test_mutated_quotes_never_verify(
    strict: tuple[QuoteVerifier, bytes, bytes], ops: list[tuple[str, int, int, int]]
) -> None:
    verifier, quote, nonce = strict
    mutated = _mutate(quote, ops)
    verdict = verifier.verify(mutated, nonce)
    assert verdict.ok is (mutated == quote)


_CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=40) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.integers(-70010, 300), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    changes=st.dictionaries(
        st.sampled_from([int(c) for c in Claim] + [1, 2, -1]), _CBOR_VALUES, max_size=4
    )
)
def test_signed_random_claims_never_raise(soft: SoftDevice, changes: dict[int, Any]) -> None:
    """Claims signed by a genuine attestation key (a compromised card): typed refusals only."""
    clock = Clock()
    manifest = {soft.uid: soft.manifest_card()}
    verifier = QuoteVerifier(ROOT.cert, manifest.get, lambda c: False, AlwaysFresh(), clock)
    nonce = secrets.token_bytes(16)
    claims = {**soft.claims(nonce), **changes}
    verdict = verifier.verify(soft.quote(nonce, claims=claims), nonce)
    if not verdict.ok:
        assert verdict.reason is not Reason.OK and verdict.detail
        return
    genuine = soft.claims(nonce)
    for key, value in changes.items():  # accepted: only changes no check depends on
        harmless = (
            (key not in genuine and key != Claim.PENDING_IDENTITY_KEY)  # claims we do not use
            or value == genuine.get(key)
            or (key == Claim.PENDING_IDENTITY_KEY and value is None)
            or (key in (Claim.KEY_EPOCH, Claim.FIRMWARE_FLOOR) and type(value) is int)
        )
        assert harmless, (key, value)


# -- the in-memory nonce store --------------------------------------------------------------------
def test_nonce_store_lifecycle() -> None:
    clock = Clock()
    store = InMemoryNonceStore(clock, ttl=dt.timedelta(seconds=60))
    a, b = store.issue("A1B2"), store.issue()
    assert len(a) == 32 and a != b and len(store) == 2
    assert store.consume(a, NOW + dt.timedelta(seconds=60)) is NonceState.OK  # boundary: still live
    assert store.consume(a, NOW) is NonceState.REUSED
    assert store.consume(b, NOW + dt.timedelta(seconds=61)) is NonceState.EXPIRED
    assert store.consume(b, NOW) is NonceState.EXPIRED  # refused even if the clock goes back
    assert store.consume(secrets.token_bytes(32), NOW) is NonceState.UNKNOWN
    assert store.consume("text", NOW) is NonceState.UNKNOWN  # type: ignore[arg-type]
    # Remembered for one more time to live, then forgotten (still refused: unknown).
    assert store.consume(a, NOW + dt.timedelta(seconds=119)) is NonceState.REUSED
    assert store.consume(a, NOW + dt.timedelta(seconds=121)) is NonceState.UNKNOWN
    assert len(store) == 0
    naive = store.issue()
    assert store.consume(naive, NOW.replace(tzinfo=None)) is NonceState.OK  # naive = UTC
    assert repr(store).startswith("InMemoryNonceStore(") and naive.hex() not in repr(store)


def test_nonce_store_capacity_and_arguments() -> None:
    clock = Clock()
    store = InMemoryNonceStore(clock, capacity=2, nonce_len=16)
    assert len(store.issue()) == 16
    store.issue()
    with pytest.raises(NonceCapacityError):
        store.issue()
    clock.now = NOW + 2 * store.ttl + dt.timedelta(seconds=1)
    store.issue()  # the old ones were forgotten
    for bad in ({"ttl": dt.timedelta(0)}, {"nonce_len": 7}, {"nonce_len": 65}, {"capacity": 0}):
        with pytest.raises(ValueError):
            InMemoryNonceStore(clock, **bad)


def test_nonce_consumed_once_under_concurrency() -> None:
    store = InMemoryNonceStore()
    nonces = [store.issue() for _ in range(50)]
    results: list[NonceState] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        now = dt.datetime.now(dt.UTC)
        for nonce in nonces:
            state = store.consume(nonce, now)
            with lock:
                results.append(state)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(NonceState.OK) == 50
    assert results.count(NonceState.REUSED) == 50 * 7

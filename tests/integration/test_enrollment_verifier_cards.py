"""The enrollment quote verifier against cards the factory made: a 2-of-3 ceremony, a P-256 and an
RSA-2048 batch personalised by the line, signed manifests verified against the root, first boot
(PROVISION) on each card, then quotes over loopback.

The attestation negative matrix of issue 5: forged signature, wrong root, expired and
not-yet-valid certificates, missing basic constraints (a batch CA built with ``cryptography``,
signed by the ceremony's root with the quorum, and a card of the batch personalised under it),
revoked attestation certificate, revoked batch CA, reused and expired nonces, UID not in the
manifest, identity key not the manifest's, x5chain in the unprotected header. Each case is
refused with its reason and a matching valid device is accepted in the same test.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iotid.apdu import ApduError
from iotid.crypto import cose
from iotid.crypto.identity_kdf import derive_identity_key
from iotid.factory import ceremony
from iotid.factory.batch import create_batch, load_batch
from iotid.factory.ceremony import init_ceremony
from iotid.factory.line import personalise_batch, read_line_key
from iotid.factory.profiles import CA_KEY_USAGE, SIGNING_KEY_USAGE
from iotid.factory.x509sign import sign_certificate
from iotid.fleet.enrollment import InMemoryNonceStore, QuoteVerifier, Reason, Verdict
from iotid.host.personalisation import PersonalisationPlan, personalise
from iotid.host.secureelement import SecureElement
from iotid.scp03 import StaticKeys
from iotid.se.applets import attestation as attestation_applet
from iotid.se.card import Card
from iotid.spec.algorithms import KeyAlg
from iotid.spec.attestation import Claim
from iotid.spec.iso7816 import SW
from iotid.spec.manifest import Manifest, ManifestCard, certificate_sha256, verify_manifest
from iotid.transport.loopback import LoopbackConnection

DER = serialization.Encoding.DER
ROLLBACK_FLOOR = 2


# -- the factory ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FactoryCard:
    """A card from the line, booted once (PROVISION), with its manifest entry."""

    path: Path
    entry: ManifestCard

    @property
    def uid(self) -> bytes:
        return self.entry.uid

    def se(self) -> SecureElement:
        return SecureElement(LoopbackConnection(Card.open(self.path)))

    def quote(self, nonce: bytes) -> bytes:
        return self.se().attestation.attest(nonce)

    def leaf(self) -> x509.Certificate:
        protected = cbor2.loads(cbor2.loads(self.quote(bytes(16))).value[0])
        return x509.load_der_x509_certificate(protected[cose.HeaderLabel.X5CHAIN][0])


@dataclass(frozen=True)
class Factory:
    cdir: Path
    shares: list[Path]
    root: x509.Certificate
    p256: Manifest
    rsa: Manifest
    p256_cards: list[FactoryCard]
    rsa_cards: list[FactoryCard]


def _line(
    cdir: Path, batch: str, count: int, out: Path, root: x509.Certificate
) -> tuple[Manifest, list[FactoryCard]]:
    result = personalise_batch(cdir, batch, count, out, rollback_floor=ROLLBACK_FLOOR)
    manifest = verify_manifest(
        result.manifest_path.read_bytes(), result.signature_path.read_bytes(), root
    )
    cards = []
    for i, entry in enumerate(manifest.cards):
        card = FactoryCard(out / "cards" / f"{i:06d}", entry)
        card.se().provisioning.provision()  # first boot at the customer's site
        cards.append(card)
    return manifest, cards


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Factory:
    work = tmp_path_factory.mktemp("enrollment")
    cer = init_ceremony(work / "ceremony", 2, 3, ["alice", "bob", "carol"], operator="op")
    shares = [s.path for s in cer.share_files]
    create_batch(cer.directory, "p256-a", "p256", shares[:2])
    create_batch(cer.directory, "rsa-a", "rsa2048", shares[1:])
    root = ceremony.root_certificate(cer.directory)
    p256, p256_cards = _line(cer.directory, "p256-a", 3, work / "out-p256", root)
    rsa, rsa_cards = _line(cer.directory, "rsa-a", 1, work / "out-rsa", root)
    return Factory(cer.directory, shares, root, p256, rsa, p256_cards, rsa_cards)


# -- the fleet ------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@dataclass
class Fleet:
    verifier: QuoteVerifier
    nonces: InMemoryNonceStore
    clock: Clock

    def verify(self, card: FactoryCard, nonce: bytes | None = None) -> Verdict:
        nonce = nonce or self.nonces.issue(card.uid.hex().upper())
        return self.verifier.verify(card.quote(nonce), nonce)

    def accepts(self, card: FactoryCard) -> Verdict:
        verdict = self.verify(card)
        assert verdict.ok, (verdict.reason, verdict.detail)
        assert verdict.uid == card.uid
        return verdict

    def refuses(self, quote: bytes, nonce: bytes, reason: Reason) -> Verdict:
        verdict = self.verifier.verify(quote, nonce)
        assert not verdict.ok and verdict.reason is reason, (verdict.reason, verdict.detail)
        assert verdict.identity_public_key is None
        return verdict


def lookup_for(manifests: Iterable[Manifest]) -> Callable[[bytes], ManifestCard | None]:
    return {card.uid: card for m in manifests for card in m.cards}.get


def fleet(
    factory: Factory,
    *,
    root: x509.Certificate | None = None,
    revoked: Callable[[x509.Certificate], bool] = lambda cert: False,
    lookup: Callable[[bytes], ManifestCard | None] | None = None,
) -> Fleet:
    clock = Clock()
    nonces = InMemoryNonceStore(clock)
    verifier = QuoteVerifier(
        root or factory.root,
        lookup or lookup_for([factory.p256, factory.rsa]),
        revoked,
        nonces,
        clock,
    )
    return Fleet(verifier, nonces, clock)


# -- accepted -------------------------------------------------------------------------------------
def test_factory_cards_are_accepted(factory: Factory) -> None:
    f = fleet(factory)
    for card in factory.p256_cards:
        verdict = f.accepts(card)
        assert verdict.identity_key_predicted is True
        assert verdict.identity_public_key == card.entry.identity_public_key
        assert verdict.identity_alg is KeyAlg.EC_P256
        assert (verdict.key_epoch, verdict.firmware_floor) == (1, ROLLBACK_FLOOR)
        leaf, batch_ca, root = verdict.chain
        assert certificate_sha256(leaf) == card.entry.attestation_cert_sha256
        assert (batch_ca, root) == (factory.p256.batch_ca, factory.root)
    (rsa_card,) = factory.rsa_cards
    verdict = f.accepts(rsa_card)
    assert verdict.identity_key_predicted is False and verdict.identity_alg is KeyAlg.RSA_2048
    assert verdict.chain[1] == factory.rsa.batch_ca and "not predictable" in verdict.detail


# -- the negative matrix --------------------------------------------------------------------------
def test_forged_signature(factory: Factory) -> None:
    f = fleet(factory)
    card, other = factory.p256_cards[:2]
    nonce = f.nonces.issue()
    quote = card.quote(nonce)
    body = list(cbor2.loads(quote).value)
    body[3] = body[3][:-1] + bytes([body[3][-1] ^ 0x01])
    forged = cbor2.dumps(cbor2.CBORTag(cose.SIGN1_TAG, body), canonical=True)
    f.refuses(forged, nonce, Reason.BAD_SIGNATURE)
    # Another card's genuine quote with this card's UID claimed: the signature breaks as well.
    theirs = list(cbor2.loads(other.quote(nonce)).value)
    claims = cbor2.loads(theirs[2])
    claims[Claim.UID] = card.uid
    theirs[2] = cbor2.dumps(claims, canonical=True)
    f.refuses(
        cbor2.dumps(cbor2.CBORTag(cose.SIGN1_TAG, theirs), canonical=True),
        nonce,
        Reason.BAD_SIGNATURE,
    )
    assert f.verifier.verify(quote, nonce).ok  # the genuine quote, same nonce: accepted


def _self_signed_root(subject: x509.Name) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA384())
    )


def test_wrong_root(factory: Factory) -> None:
    card = factory.p256_cards[0]
    impostor = _self_signed_root(factory.root.subject)  # the same name, another key
    stranger = _self_signed_root(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other")]))
    for root in (impostor, stranger):
        f = fleet(factory, root=root)
        nonce = f.nonces.issue()
        verdict = f.refuses(card.quote(nonce), nonce, Reason.CHAIN_UNTRUSTED)
        assert "issuance root" in verdict.detail
    fleet(factory).accepts(card)


def test_expired_and_not_yet_valid_certificates(factory: Factory) -> None:
    card = factory.p256_cards[0]
    leaf = card.leaf()
    f = fleet(factory)
    second = dt.timedelta(seconds=1)
    # Every certificate of the hierarchy lives 20 years from its making (the leaf expires first
    # in path order); the root is made without the 5-minute backdating of the others.
    cases = [
        (leaf.not_valid_after_utc + second, Reason.CERT_EXPIRED, "attestation certificate"),
        (leaf.not_valid_before_utc - second, Reason.CERT_NOT_YET_VALID, "attestation certificate"),
        (factory.root.not_valid_before_utc - second, Reason.CERT_NOT_YET_VALID, "issuance root"),
    ]
    for moment, reason, who in cases:
        nonce = f.nonces.issue()
        quote = card.quote(nonce)
        real = f.clock.now
        f.clock.now = moment
        assert who in f.refuses(quote, nonce, reason).detail
        f.clock.now = real
        assert f.verifier.verify(quote, nonce).ok  # same quote, the right time: accepted


def test_missing_basic_constraints(factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch CA without basicConstraints, signed by the real root (a ceremony mistake), and a
    card of the P-256 batch (same master key) personalised under it."""
    root_store = ceremony.quorum_unlock(factory.cdir, factory.shares[:2])
    ca_key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iotid batch CA, no constraints")])
    bad_ca = sign_certificate(
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(factory.root.subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(CA_KEY_USAGE, critical=True),  # no basicConstraints
        root_store.signer(ceremony.ROOT_KEY),
    )
    bad_ca.verify_directly_issued_by(factory.root)
    info = load_batch(factory.cdir, "p256-a")
    store = ceremony.open_store(factory.cdir)
    store.unlock_operational(read_line_key(info.line_key_path))
    issued: list[x509.Certificate] = []

    def certify(public: Any, uid: bytes) -> tuple[x509.Certificate, x509.Certificate]:
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, uid.hex().upper())]))
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(SIGNING_KEY_USAGE, critical=True)
            .sign(ca_key, hashes.SHA384())
        )
        issued.append(leaf)
        return leaf, bad_ca

    master = store.secret(info.keys["master"])
    plan = PersonalisationPlan(
        alg=KeyAlg.EC_P256,
        master_key=master,
        operator_rekey_key=store.public_key(info.keys["operator_rekey"]),
        certify=certify,
        firmware_keys=(store.public_key(info.keys["firmware"]),),
        rotation_authority=store.public_key(info.keys["rotation_authority"]),
        new_isd_keys=StaticKeys(*(secrets.token_bytes(16) for _ in range(3))),
    )
    with pytest.raises(ApduError) as err:  # our applet refuses such a CA (defence in depth)
        personalise(LoopbackConnection(Card.create(None)), plan)
    assert err.value.sw == SW.WRONG_DATA
    card = Card.create(None)
    with monkeypatch.context() as mp:  # a card whose applet does not check: the fleet must
        mp.setattr(attestation_applet, "_check_ca", lambda cert: cert)
        personalise(LoopbackConnection(card), plan)
    se = SecureElement(LoopbackConnection(card))
    identity = se.provisioning.provision()
    predicted = derive_identity_key(master, card.uid, KeyAlg.EC_P256).public_key()
    assert identity == predicted  # a genuine card of the batch in every other respect
    entry = ManifestCard(card.uid, predicted, certificate_sha256(issued[-1]), KeyAlg.EC_P256)
    manifest = {card.uid: entry, **{c.uid: c.entry for c in factory.p256_cards}}
    f = fleet(factory, lookup=manifest.get)
    nonce = f.nonces.issue()
    verdict = f.refuses(se.attestation.attest(nonce), nonce, Reason.CA_CONSTRAINTS)
    assert "batch CA" in verdict.detail
    f.accepts(factory.p256_cards[0])


def test_revoked_attestation_certificate(factory: Factory) -> None:
    card, other = factory.p256_cards[:2]
    revoked_leaf = card.leaf()
    f = fleet(factory, revoked=lambda cert: cert == revoked_leaf)
    nonce = f.nonces.issue()
    f.refuses(card.quote(nonce), nonce, Reason.REVOKED_ATTESTATION_CERT)
    f.accepts(other)


def test_revoked_batch_ca(factory: Factory) -> None:
    f = fleet(factory, revoked=lambda cert: cert == factory.p256.batch_ca)
    for card in factory.p256_cards:
        nonce = f.nonces.issue()
        f.refuses(card.quote(nonce), nonce, Reason.REVOKED_BATCH_CA)
    f.accepts(factory.rsa_cards[0])  # another batch under the same root


def test_reused_nonce(factory: Factory) -> None:
    f = fleet(factory)
    card, other = factory.p256_cards[:2]
    nonce = f.nonces.issue()
    quote = card.quote(nonce)
    assert f.verifier.verify(quote, nonce).ok
    f.refuses(quote, nonce, Reason.NONCE_REUSED)  # the same quote replayed
    f.refuses(other.quote(nonce), nonce, Reason.NONCE_REUSED)  # another card, same nonce
    f.accepts(other)


def test_expired_nonce(factory: Factory) -> None:
    f = fleet(factory)
    card = factory.p256_cards[0]
    nonce = f.nonces.issue()
    quote = card.quote(nonce)
    f.clock.now += f.nonces.ttl + dt.timedelta(seconds=1)
    f.refuses(quote, nonce, Reason.NONCE_EXPIRED)
    f.accepts(card)  # a fresh nonce


def test_uid_not_in_manifest(factory: Factory) -> None:
    f = fleet(factory, lookup=lookup_for([factory.p256]))  # the RSA batch was never imported
    (rsa_card,) = factory.rsa_cards
    nonce = f.nonces.issue()
    verdict = f.refuses(rsa_card.quote(nonce), nonce, Reason.UID_NOT_IN_MANIFEST)
    assert verdict.uid == rsa_card.uid  # authenticated: the card's signature verified
    f.accepts(factory.p256_cards[0])


def test_identity_key_not_in_manifest(factory: Factory) -> None:
    card, other = factory.p256_cards[:2]
    entries = {c.uid: c.entry for c in factory.p256_cards}
    wrong_key = ec.generate_private_key(ec.SECP256R1()).public_key()
    entries[card.uid] = dataclasses.replace(card.entry, identity_public_key=wrong_key)
    f = fleet(factory, lookup=entries.get)
    nonce = f.nonces.issue()
    f.refuses(card.quote(nonce), nonce, Reason.IDENTITY_KEY_MISMATCH)
    f.accepts(other)


def test_x5chain_in_the_unprotected_header(factory: Factory) -> None:
    f = fleet(factory)
    card = factory.p256_cards[0]
    nonce = f.nonces.issue()
    quote = card.quote(nonce)
    body = list(cbor2.loads(quote).value)
    protected = cbor2.loads(body[0])
    chain = protected[cose.HeaderLabel.X5CHAIN]
    # Copied: the protected header is untouched, so the signature still verifies.
    copied = cbor2.dumps(
        cbor2.CBORTag(18, [body[0], {cose.HeaderLabel.X5CHAIN: chain}, body[2], body[3]]),
        canonical=True,
    )
    leaf = x509.load_der_x509_certificate(chain[0])
    tbs = cose.sig_structure(body[0], body[2])
    assert cose.verify_signature(cose.CoseAlg.ES256, leaf.public_key(), tbs, body[3])  # type: ignore[arg-type]
    f.refuses(copied, nonce, Reason.X5CHAIN_UNPROTECTED)
    # Moved: only in the unprotected header.
    del protected[cose.HeaderLabel.X5CHAIN]
    moved = cbor2.dumps(
        cbor2.CBORTag(
            18,
            [cose.encode_protected(protected), {cose.HeaderLabel.X5CHAIN: chain}, body[2], body[3]],
        ),
        canonical=True,
    )
    f.refuses(moved, nonce, Reason.X5CHAIN_UNPROTECTED)
    assert f.verifier.verify(quote, nonce).ok  # the original quote, same nonce


def test_fingerprint_binds_each_uid_to_its_card(factory: Factory) -> None:
    """The manifest ties a UID to the attestation certificate the factory issued for it: a
    lookup that answers with another card's entry (a registry bug) is refused."""
    card, other = factory.p256_cards[:2]
    entries = {c.uid: c.entry for c in factory.p256_cards}
    entries[card.uid] = dataclasses.replace(other.entry, uid=card.uid)
    f = fleet(factory, lookup=entries.get)
    nonce = f.nonces.issue()
    f.refuses(card.quote(nonce), nonce, Reason.ATTESTATION_CERT_MISMATCH)
    f.accepts(other)
    assert (
        hashlib.sha256(card.leaf().public_bytes(DER)).hexdigest()
        == card.entry.attestation_cert_sha256
    )

"""The attestation applet through its host session: two-phase personalisation through the ISD,
GET ATTESTATION KEY, ATTEST and the quote's claims, and the negative matrix (each refusal: a
precise status word and no NVM change).

The identity key is put in directly with ``IdentityStore.provision`` (the provisioning applet is
tested on its own). Not covered here: interop with an independent COSE library and the chain walk
to the root (tests/integration/test_attestation_interop.py), COSE known answers
(tests/unit/crypto/test_cose.py).
"""

from __future__ import annotations

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from iotid.apdu import ApduError
from iotid.crypto import cose
from iotid.host import SecurityDomainSession, SmartCardProtocol
from iotid.host.attestation import (
    AttestationKeyUnavailableError,
    AttestationSession,
    AttestationUnavailableError,
    InvalidNonceError,
    QuoteFormatError,
    decode_quote,
    perso_dgis_certificates,
    perso_dgis_generate,
)
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.attestation import AttestationApplet
from iotid.se.identity import IdentityStore
from iotid.spec import attestation as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.attestation import Claim, Dgi, Ins
from iotid.spec.identity import APP_PERSONALISED, CLA_IOTID, SHARED_FIRMWARE_FLOOR_RECORD
from iotid.spec.iso7816 import SW
from iotid.transport.loopback import LoopbackConnection
from support.pki import PrivateKey, builder

UID = bytes.fromhex("A1A2A3A4A5A6A7A8A9AA")
NONCE = bytes(range(16))
Snapshot = dict[str, bytes | None]


# -- a small PKI: root -> batch attestation CA -> attestation certificate ----------------------
def make_cert(
    public: cose.PublicKey,
    subject: str,
    issuer: str,
    issuer_key: PrivateKey,
    *,
    ca: bool,
    digital_signature: bool | None = None,
    cert_sign: bool | None = None,
) -> x509.Certificate:
    unsigned = builder(
        subject,
        public,
        issuer=issuer,
        ca=ca,
        path_length=0 if ca else None,
        digital_signature=digital_signature,
        cert_sign=cert_sign,
        days=30,
        key_ids=False,
    )
    return unsigned.sign(issuer_key, hashes.SHA256())


ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
BATCH_KEY = ec.generate_private_key(ec.SECP256R1())
BATCH = make_cert(BATCH_KEY.public_key(), "batch CA", "root", ROOT_KEY, ca=True)
OTHER_BATCH = make_cert(ROOT_KEY.public_key(), "batch CA", "root", ROOT_KEY, ca=True)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def spki(key: cose.PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def certify(public: cose.PublicKey, **kw: bool) -> x509.Certificate:
    return make_cert(public, "attestation", "batch CA", BATCH_KEY, ca=False, **kw)


# -- card helpers ------------------------------------------------------------------------------
def new_card() -> Card:
    return Card.create(None, uid=UID, applets=[AttestationApplet])


def snapshot(card: Card) -> Snapshot:
    return {k: card.nvm.get(k) for k in card.nvm.keys(prefix="")}


def isd(card: Card) -> SecurityDomainSession:
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(spec.AID)
    return sd


def session(card: Card, *, extended: bool = False) -> AttestationSession:
    return AttestationSession(SmartCardProtocol(LoopbackConnection(card), extended=extended))


def generate(card: Card, alg: KeyAlg = KeyAlg.EC_P256) -> cose.PublicKey:
    """Personalisation phase 1: DGI 0201 without the last block, then read the public key."""
    isd(card).store_data(perso_dgis_generate(alg), last=False)
    return session(card).attestation_public_key()


def store(card: Card, dgis: list[tuple[int, bytes]], *, last: bool = True) -> None:
    isd(card).store_data(dgis, last=last)


def personalise(card: Card, alg: KeyAlg = KeyAlg.EC_P256) -> x509.Certificate:
    cert = certify(generate(card, alg))
    store(card, perso_dgis_certificates(der(cert), der(BATCH)))
    return cert


def provision_identity(card: Card, key: PrivateKey | None = None) -> PrivateKey:
    key = key or ec.generate_private_key(ec.SECP256R1())
    with card.nvm.transaction():
        IdentityStore(card.nvm, card.keys).provision(key)
    return key


def raw(
    card: Card, ins: int, data: bytes = b"", p1: int = 0, p2: int = 0, cla: int = CLA_IOTID
) -> int:
    """Send one command to the (selected) attestation applet; return the status word."""
    proto = SmartCardProtocol(LoopbackConnection(card))
    proto.select(spec.AID)
    try:
        proto.transmit(cla, ins, p1, p2, data, 256)
    except ApduError as exc:
        return exc.sw
    return int(SW.OK)


def expect_refusal(card: Card, sw: int, action: object) -> None:
    before = snapshot(card)
    with pytest.raises(ApduError) as err:
        action()  # type: ignore[operator]
    assert err.value.sw == sw
    assert snapshot(card) == before


def expect_perso_refusal(
    card: Card, sw: int, dgis: list[tuple[int, bytes]], *, last: bool = True
) -> None:
    """STORE DATA refused with ``sw``; the NVM is as it was once the SCP03 session was open
    (opening one advances the ISD's sequence counter, which is not the applet's state)."""
    sd = isd(card)
    expect_refusal(card, sw, lambda: sd.store_data(dgis, last=last))


@pytest.fixture
def card() -> Card:
    return new_card()


@pytest.fixture
def ready() -> tuple[Card, x509.Certificate, PrivateKey]:
    card = new_card()
    cert = personalise(card)
    return card, cert, provision_identity(card)


# -- personalisation ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("alg", "kind"),
    [
        (KeyAlg.EC_P256, ec.EllipticCurvePublicKey),
        (KeyAlg.EC_P384, ec.EllipticCurvePublicKey),
        (KeyAlg.RSA_2048, rsa.RSAPublicKey),
    ],
)
def test_generation_then_certificates_personalise(card: Card, alg: KeyAlg, kind: type) -> None:
    public = generate(card, alg)
    assert isinstance(public, kind)
    assert public.key_size == alg.size_bits
    assert card.app_life_cycle(spec.AID) != APP_PERSONALISED
    # No private key material anywhere in the answer: it is exactly the SPKI.
    assert session(card).attestation_public_key() == public
    cert = certify(public)
    store(card, perso_dgis_certificates(der(cert), der(BATCH)))
    assert card.app_life_cycle(spec.AID) == APP_PERSONALISED


def test_get_attestation_key_before_generation(card: Card) -> None:
    before = snapshot(card)
    with pytest.raises(AttestationKeyUnavailableError) as err:
        session(card).attestation_public_key()
    assert isinstance(err.value.__cause__, ApduError)
    assert err.value.__cause__.sw == SW.REFERENCED_DATA_NOT_FOUND
    assert snapshot(card) == before


def test_get_attestation_key_after_personalisation(card: Card) -> None:
    personalise(card)
    before = snapshot(card)
    with pytest.raises(AttestationKeyUnavailableError) as err:
        session(card).attestation_public_key()
    assert isinstance(err.value.__cause__, ApduError)
    assert err.value.__cause__.sw == SW.CONDITIONS_NOT_SATISFIED
    assert snapshot(card) == before


@pytest.mark.parametrize("value", [b"", b"\x21", b"\x03", b"\x01\x01", bytes([KeyAlg.AES_256])])
def test_bad_key_algorithm_dgi(card: Card, value: bytes) -> None:
    expect_perso_refusal(card, SW.WRONG_DATA, [(Dgi.KEY_ALG, value)], last=False)


def test_unknown_dgi(card: Card) -> None:
    expect_perso_refusal(card, SW.REFERENCED_DATA_NOT_FOUND, [(0x0204, b"\x01")], last=False)


def test_certificate_before_the_key(card: Card) -> None:
    cert = certify(ec.generate_private_key(ec.SECP256R1()).public_key())
    expect_perso_refusal(
        card, SW.CONDITIONS_NOT_SATISFIED, [(Dgi.ATTESTATION_CERT, der(cert))], last=False
    )


def test_certificate_for_another_key_is_refused_and_nothing_stored(card: Card) -> None:
    generate(card)
    wrong = certify(ec.generate_private_key(ec.SECP256R1()).public_key())
    expect_perso_refusal(card, SW.WRONG_DATA, perso_dgis_certificates(der(wrong), der(BATCH)))
    app = card.applet(spec.AID)
    assert app is not None and app.load("cert") is None and app.load("batch-ca") is None


def test_leaf_must_not_be_a_ca_and_must_sign(card: Card) -> None:
    public = generate(card)
    as_ca = make_cert(public, "attestation", "batch CA", BATCH_KEY, ca=True)
    no_sign = certify(public, digital_signature=False)
    for bad in (as_ca, no_sign):
        expect_perso_refusal(card, SW.WRONG_DATA, [(Dgi.ATTESTATION_CERT, der(bad))])


def test_batch_certificate_checks(card: Card) -> None:
    leaf = der(certify(generate(card)))
    not_ca = make_cert(BATCH_KEY.public_key(), "batch CA", "root", ROOT_KEY, ca=False)
    no_cert_sign = make_cert(
        BATCH_KEY.public_key(), "batch CA", "root", ROOT_KEY, ca=True, cert_sign=False
    )
    for bad in (
        der(not_ca),
        der(no_cert_sign),
        b"\x30\x03\x02\x01\x00",  # not a certificate
        der(BATCH) + b"\x00",  # trailing bytes after the DER
    ):
        expect_perso_refusal(card, SW.WRONG_DATA, [(Dgi.BATCH_CA_CERT, bad)])
    # Each DGI commits with the STORE DATA block that completes it: a good leaf sent first stays,
    # the refused CA certificate does not, and the applet still waits for a valid one.
    store(card, [(Dgi.ATTESTATION_CERT, leaf)], last=False)
    expect_perso_refusal(card, SW.WRONG_DATA, [(Dgi.BATCH_CA_CERT, der(OTHER_BATCH))])
    app = card.applet(spec.AID)
    assert app is not None and app.load("cert") == leaf and app.load("batch-ca") is None
    store(card, [(Dgi.BATCH_CA_CERT, der(BATCH))])
    assert card.app_life_cycle(spec.AID) == APP_PERSONALISED


def test_ca_that_did_not_issue_the_leaf_is_refused_in_either_order(card: Card) -> None:
    leaf = der(certify(generate(card)))
    store(card, [(Dgi.BATCH_CA_CERT, der(OTHER_BATCH))], last=False)
    expect_perso_refusal(card, SW.WRONG_DATA, [(Dgi.ATTESTATION_CERT, leaf)], last=False)


def test_oversize_certificate(card: Card) -> None:
    generate(card)
    big = b"\x30\x82" + spec.CERT_MAX_LEN.to_bytes(2, "big") + bytes(spec.CERT_MAX_LEN)
    expect_perso_refusal(card, SW.NOT_ENOUGH_MEMORY, [(Dgi.BATCH_CA_CERT, big)], last=False)


def test_last_block_without_all_three_dgis(card: Card) -> None:
    # Generation alone, closed with the last block: 6985 and the key pair is rolled back.
    expect_perso_refusal(card, SW.CONDITIONS_NOT_SATISFIED, perso_dgis_generate(KeyAlg.EC_P256))
    assert not card.keys.has("attestation.key")
    leaf = der(certify(generate(card)))
    expect_perso_refusal(card, SW.CONDITIONS_NOT_SATISFIED, [(Dgi.ATTESTATION_CERT, leaf)])
    expect_perso_refusal(card, SW.CONDITIONS_NOT_SATISFIED, [(Dgi.BATCH_CA_CERT, der(BATCH))])
    assert card.app_life_cycle(spec.AID) != APP_PERSONALISED


def test_regenerating_the_key_drops_its_certificates(card: Card) -> None:
    leaf = der(certify(generate(card)))
    store(card, perso_dgis_certificates(leaf, der(BATCH)), last=False)
    app = card.applet(spec.AID)
    assert app is not None and app.load("cert") == leaf
    generate(card)  # a new key pair: the old certificate certifies nothing now
    assert app.load("cert") is None and app.load("batch-ca") is None
    expect_perso_refusal(card, SW.CONDITIONS_NOT_SATISFIED, [])


def test_no_personalisation_data_once_personalised(card: Card) -> None:
    personalise(card)
    expect_perso_refusal(card, SW.CONDITIONS_NOT_SATISFIED, perso_dgis_generate(KeyAlg.EC_P256))


def test_perso_dgi_builders_validate() -> None:
    assert perso_dgis_generate(KeyAlg.EC_P384) == [(0x0201, b"\x02")]
    with pytest.raises(ValueError):
        perso_dgis_generate(KeyAlg.AES_128)
    assert perso_dgis_certificates(b"a", b"b") == [(0x0202, b"a"), (0x0203, b"b")]
    with pytest.raises(ValueError):
        perso_dgis_certificates(b"", b"b")
    with pytest.raises(ValueError):
        perso_dgis_certificates(b"a", bytes(spec.CERT_MAX_LEN + 1))


# -- ATTEST: refusals --------------------------------------------------------------------------
def test_attest_before_personalisation(card: Card) -> None:
    provision_identity(card)
    before = snapshot(card)
    with pytest.raises(AttestationUnavailableError):
        session(card).attest(NONCE)
    assert raw(card, Ins.ATTEST, NONCE) == SW.CONDITIONS_NOT_SATISFIED
    assert snapshot(card) == before
    generate(card)  # key generated, certificates still missing
    before = snapshot(card)
    assert raw(card, Ins.ATTEST, NONCE) == SW.CONDITIONS_NOT_SATISFIED
    assert raw(card, Ins.ATTEST, b"", p1=1) == SW.CONDITIONS_NOT_SATISFIED  # 6985 comes first
    assert snapshot(card) == before


def test_attest_without_identity_key(card: Card) -> None:
    personalise(card)
    before = snapshot(card)
    with pytest.raises(AttestationUnavailableError):
        session(card).attest(NONCE)
    assert snapshot(card) == before


@pytest.mark.parametrize("length", [0, 1, spec.NONCE_MIN - 1, spec.NONCE_MAX + 1, 300])
def test_nonce_length_refused(
    ready: tuple[Card, x509.Certificate, PrivateKey], length: int
) -> None:
    card = ready[0]
    before = snapshot(card)
    with pytest.raises(InvalidNonceError):
        session(card).attest(bytes(length))
    assert snapshot(card) == before


@pytest.mark.parametrize(("p1", "p2"), [(1, 0), (0, 1), (0xFF, 0xFF)])
def test_wrong_p1_p2(ready: tuple[Card, x509.Certificate, PrivateKey], p1: int, p2: int) -> None:
    card = ready[0]
    before = snapshot(card)
    assert raw(card, Ins.ATTEST, NONCE, p1, p2) == SW.INCORRECT_P1P2
    assert snapshot(card) == before


def test_wrong_class_and_instruction(ready: tuple[Card, x509.Certificate, PrivateKey]) -> None:
    card = ready[0]
    assert raw(card, Ins.ATTEST, NONCE, cla=0x00) == SW.CLA_NOT_SUPPORTED
    assert raw(card, 0x44, NONCE) == SW.INS_NOT_SUPPORTED


def test_get_attestation_key_refuses_data_and_p1p2(card: Card) -> None:
    generate(card)
    assert raw(card, Ins.GET_ATTESTATION_KEY, b"\x00") == SW.WRONG_LENGTH
    assert raw(card, Ins.GET_ATTESTATION_KEY, p1=1) == SW.INCORRECT_P1P2


def test_corrupt_firmware_floor_record(ready: tuple[Card, x509.Certificate, PrivateKey]) -> None:
    card = ready[0]
    with card.nvm.transaction():
        card.nvm.put(SHARED_FIRMWARE_FLOOR_RECORD, b"\x01\x02")
    assert raw(card, Ins.ATTEST, NONCE) == SW.MEMORY_FAILURE


# -- ATTEST: the quote -------------------------------------------------------------------------
@pytest.mark.parametrize("nonce_len", [spec.NONCE_MIN, 32, spec.NONCE_MAX])
def test_quote_claims(ready: tuple[Card, x509.Certificate, PrivateKey], nonce_len: int) -> None:
    card, cert, identity = ready
    nonce = bytes(range(nonce_len))
    before = snapshot(card)
    quote_bytes = session(card).attest(nonce)
    assert snapshot(card) == before  # a quote changes nothing on the card
    assert len(quote_bytes) > 256  # came back through 61xx / GET RESPONSE
    quote = decode_quote(quote_bytes)
    assert quote.alg is cose.CoseAlg.ES256
    assert quote.nonce == nonce
    assert quote.uid == UID
    assert quote.ueid == spec.ueid_for_uid(UID)
    assert quote.ueid[0] == 0x01 and len(quote.ueid) == 17
    assert quote.profile == spec.PROFILE
    assert quote.provisioned is True
    assert quote.key_epoch == 1
    assert quote.firmware_floor == 0
    assert quote.identity_alg is KeyAlg.EC_P256
    assert spki(quote.identity_public_key) == spki(identity.public_key())
    assert [der(c) for c in quote.certificates] == [der(cert), der(BATCH)]
    assert cose.verify_sign1(quote.message, cert.public_key())  # type: ignore[arg-type]
    # The x5chain is protected: it is inside the signed bytes.
    assert der(cert) in quote.message.protected_bytes
    assert not quote.message.unprotected


def test_ueid_known_answer() -> None:
    # GNU coreutils: (printf 'iotid-ueid'; printf '\xA1\xA2...\xAA') | sha256sum
    #   -> 8a08a767d7bb1f9184f9b19dc40058d6 5d66bc594e62d787c695fe4359bd7504
    assert spec.ueid_for_uid(UID) == bytes.fromhex("01" + "8a08a767d7bb1f9184f9b19dc40058d6")


def test_quote_reports_the_firmware_floor_and_follows_rotation(
    ready: tuple[Card, x509.Certificate, PrivateKey],
) -> None:
    card = ready[0]
    with card.nvm.transaction():
        card.nvm.put(SHARED_FIRMWARE_FLOOR_RECORD, (0x01020304).to_bytes(4, "big"))
    assert decode_quote(session(card).attest(NONCE)).firmware_floor == 0x01020304
    with card.nvm.transaction():
        store_ = IdentityStore(card.nvm, card.keys)
        new = store_.generate_pending(KeyAlg.EC_P384)
        store_.commit_pending()
    quote = decode_quote(session(card).attest(NONCE))
    assert quote.key_epoch == 2
    assert quote.identity_alg is KeyAlg.EC_P384
    assert spki(quote.identity_public_key) == spki(new)


def test_rsa_identity_key_in_cnf(card: Card) -> None:
    personalise(card)
    identity = provision_identity(
        card, rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    quote = decode_quote(session(card).attest(NONCE))
    assert quote.identity_alg is KeyAlg.RSA_2048
    assert spki(quote.identity_public_key) == spki(identity.public_key())
    cnf = cbor2.loads(quote.message.payload)[Claim.CNF][1]
    assert cnf[1] == 3 and cnf[-2] == b"\x01\x00\x01"


def test_extended_length_protocol(ready: tuple[Card, x509.Certificate, PrivateKey]) -> None:
    card = ready[0]
    quote = decode_quote(session(card, extended=True).attest(NONCE))
    assert quote.nonce == NONCE


def test_first_response_is_61xx(ready: tuple[Card, x509.Certificate, PrivateKey]) -> None:
    card = ready[0]
    conn = LoopbackConnection(card)
    assert conn.transmit(bytes([0, 0xA4, 4, 0, len(spec.AID)]) + spec.AID)[-2:] == b"\x90\x00"
    first = conn.transmit(bytes([CLA_IOTID, Ins.ATTEST, 0, 0, len(NONCE)]) + NONCE + b"\x00")
    assert first[-2] == 0x61 and len(first) == 258


def test_quotes_are_fresh_signatures(ready: tuple[Card, x509.Certificate, PrivateKey]) -> None:
    card, cert, _ = ready
    a = decode_quote(session(card).attest(NONCE))
    b = decode_quote(session(card).attest(NONCE[::-1]))
    assert a.message.payload != b.message.payload
    assert cose.verify_sign1(b.message, cert.public_key())  # type: ignore[arg-type]
    # A's signature does not cover B's payload.
    swapped = cose.Sign1(
        a.message.protected_bytes, a.message.protected, {}, b.message.payload, a.message.signature
    )
    assert not cose.verify_sign1(swapped, cert.public_key())  # type: ignore[arg-type]


# -- decode_quote ------------------------------------------------------------------------------
def test_decode_quote_refuses_malformed(ready: tuple[Card, x509.Certificate, PrivateKey]) -> None:
    card = ready[0]
    good = session(card).attest(NONCE)
    msg = cose.decode_sign1(good)
    claims = cbor2.loads(msg.payload)

    def rebuild(payload: bytes, protected: bytes = msg.protected_bytes, tag: bool = True) -> bytes:
        body = [protected, {}, payload, msg.signature]
        return cbor2.dumps(cbor2.CBORTag(18, body) if tag else body)

    missing = {k: v for k, v in claims.items() if k != Claim.NONCE}
    wrong_type = {**claims, Claim.KEY_EPOCH: True}
    negative = {**claims, Claim.FIRMWARE_FLOOR: -1}
    bad_alg = {**claims, Claim.IDENTITY_ALG: 0x99}
    bad_cnf = {**claims, Claim.CNF: {1: {1: 2}}}
    no_chain = cbor2.dumps({1: -7})
    bad_chain = cbor2.dumps({1: -7, 33: [b"\x30\x00"]})
    for bad in (
        b"",
        good + b"\x00",
        rebuild(msg.payload, tag=False),
        rebuild(cbor2.dumps(missing)),
        rebuild(cbor2.dumps(wrong_type)),
        rebuild(cbor2.dumps(negative)),
        rebuild(cbor2.dumps(bad_alg)),
        rebuild(cbor2.dumps(bad_cnf)),
        rebuild(cbor2.dumps([1, 2])),
        rebuild(msg.payload, protected=no_chain),
        rebuild(msg.payload, protected=bad_chain),
    ):
        with pytest.raises(QuoteFormatError):
            decode_quote(bad)


def test_quote_covers_the_pending_key_during_a_rotation(
    ready: tuple[Card, x509.Certificate, PrivateKey],
) -> None:
    """A rotation proof is signed by the identity key, which the mTLS applet lets the host use for
    any digest; the quote (attestation key only) is what shows the pending key is in this SE."""
    card, _, _ = ready
    assert (
        spec.Claim.PENDING_IDENTITY_KEY not in decode_quote(session(card).attest(b"n" * 16)).claims
    )
    with card.nvm.transaction():
        pending = IdentityStore(card.nvm, card.keys).generate_pending(KeyAlg.EC_P256)
    claims = decode_quote(session(card).attest(b"n" * 16)).claims
    key = cose.public_key_from_cose_key(dict(claims[spec.Claim.PENDING_IDENTITY_KEY]))
    assert key == pending

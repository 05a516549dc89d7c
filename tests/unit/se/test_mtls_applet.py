"""The mTLS credential applet through its host session and as raw APDUs (DESIGN.md section 6.3).

Scope: personalisation (DGI 0301) through the ISD, SIGN DIGEST for P-256, P-384, RSA-2048 and
RSA-3072 under every scheme that fits the key, verified with ``cryptography`` against the public
key; GET PUBLIC KEY; chain order and size rules; the negative matrix (every command before
personalisation and without an identity key, wrong P1/P2, malformed data objects, refused
schemes, personalisation errors), each with "no state change" checked; no private key byte in
any response; :func:`perso_dgis`.

The identity key is placed directly with ``IdentityStore.provision`` (the provisioning applet is
tested on its own). Not covered here: CSRs checked by OpenSSL, chain installation against the
CSR's key and rotation (``tests/integration/test_mtls_csr_openssl.py``).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from iotid.apdu import ApduError, CommandApdu, tlv
from iotid.host.mtls import (
    ChainRejectedError,
    ChainTooLargeError,
    MtlsSession,
    NoCredentialError,
    NotPersonalisedError,
    SchemeNotAllowedError,
    perso_dgis,
)
from iotid.host.protocol import SmartCardProtocol
from iotid.host.securitydomain import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.mtls import MtlsApplet
from iotid.se.identity import IdentityStore
from iotid.se.keystore import PrivateKey
from iotid.spec import mtls
from iotid.spec.algorithms import KeyAlg
from iotid.spec.gp import AppLifeCycle
from iotid.spec.identity import APP_PERSONALISED, CLA_IOTID
from iotid.spec.iso7816 import SW
from iotid.spec.mtls import Dgi, Ins, SchemeBit, SignScheme, Tag
from iotid.transport.loopback import LoopbackConnection

UID = bytes.fromhex("00112233445566778899")
ALGS = [KeyAlg.EC_P256, KeyAlg.EC_P384, KeyAlg.RSA_2048]
_KEYS: dict[KeyAlg, PrivateKey] = {}


def key_for(alg: KeyAlg) -> PrivateKey:
    """One key per algorithm for the whole module (RSA generation is slow)."""
    if alg not in _KEYS:
        if alg.is_ec:
            curve = ec.SECP256R1() if alg is KeyAlg.EC_P256 else ec.SECP384R1()
            _KEYS[alg] = ec.generate_private_key(curve)
        else:
            _KEYS[alg] = rsa.generate_private_key(65537, alg.size_bits)
    return _KEYS[alg]


def new_card() -> Card:
    return Card.create(None, uid=UID, applets=[MtlsApplet])


def personalise(card: Card, dgis: list[tuple[int, bytes]] | None = None) -> None:
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(mtls.AID)
    sd.store_data(perso_dgis() if dgis is None else dgis)


def provision(card: Card, key: PrivateKey) -> None:
    with card.nvm.transaction():
        IdentityStore(card.nvm, card.keys).provision(key)


def rotate(card: Card, alg: KeyAlg) -> None:
    with card.nvm.transaction():
        ids = IdentityStore(card.nvm, card.keys)
        ids.generate_pending(alg)
        ids.commit_pending()


def open_session(card: Card, *, extended: bool = False) -> MtlsSession:
    return MtlsSession(SmartCardProtocol(LoopbackConnection(card), extended=extended))


def ready_card(alg: KeyAlg, dgis: list[tuple[int, bytes]] | None = None) -> Card:
    card = new_card()
    personalise(card, dgis)
    provision(card, key_for(alg))
    return card


def snapshot(card: Card, *, personalising: bool = False) -> dict[str, bytes | None]:
    """Every NVM record; while personalising, less the ISD's SCP03 sequence counter, which
    opening the secure channel advances whatever the applet does."""
    names = card.nvm.keys("")
    if personalising:
        names = [n for n in names if not n.startswith("isd/seq/")]
    return {k: card.nvm.get(k) for k in names}


def raw_sw(session: MtlsSession, ins: int, p1: int = 0, p2: int = 0, data: bytes = b"") -> int:
    cmd = CommandApdu(CLA_IOTID, ins, p1, p2, data, 256, extended=len(data) > 255)
    return session.protocol.send(cmd).sw


def _hash(name: str) -> hashes.SHA256 | hashes.SHA384:
    return hashes.SHA256() if name == "sha256" else hashes.SHA384()


def verify(public: object, signature: bytes, digest: bytes, scheme: SignScheme) -> None:
    """Raises InvalidSignature unless ``signature`` is ``scheme`` over ``digest``."""
    h = _hash(scheme.hash_name)
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, digest, ec.ECDSA(Prehashed(h)))
    elif isinstance(public, rsa.RSAPublicKey):
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
            if scheme.family == "pss"
            else padding.PKCS1v15()
        )
        public.verify(signature, digest, pad, Prehashed(h))
    else:
        raise AssertionError("unexpected key type")


def make_cert(
    subject: str,
    public: object,
    issuer_key: PrivateKey,
    issuer: x509.Name | None = None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def ca_and_leaf(public: object) -> tuple[x509.Certificate, x509.Certificate]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = make_cert("test CA", ca_key.public_key(), ca_key, ca=True)
    return make_cert("device", public, ca_key, ca.subject), ca


# -- positive paths ------------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ALGS, ids=lambda a: a.name)
def test_every_fitting_scheme_signs_and_verifies(alg: KeyAlg) -> None:
    card = ready_card(alg)
    se = open_session(card)
    public = key_for(alg).public_key()
    schemes = mtls.schemes_for(alg)
    assert schemes  # P-256: ECDSA-SHA256; P-384: ECDSA-SHA384; RSA: PSS and PKCS#1, both hashes
    for scheme in schemes:
        message = os.urandom(100)
        h = hashes.Hash(_hash(scheme.hash_name))
        h.update(message)
        digest = h.finalize()
        signature = se.sign_digest(digest, scheme.hash_name, scheme.family)
        verify(public, signature, digest, scheme)
        if isinstance(public, rsa.RSAPublicKey):
            assert len(signature) == public.key_size // 8  # raw, not wrapped
            if scheme.family == "pkcs1":  # the card built the DigestInfo: verify over the message
                public.verify(signature, message, padding.PKCS1v15(), _hash(scheme.hash_name))
        else:
            assert signature[0] == 0x30  # DER ECDSA-Sig-Value


def test_rsa3072_signs_with_pss_and_pkcs1_and_makes_a_csr() -> None:
    card = ready_card(KeyAlg.RSA_3072)
    se = open_session(card, extended=True)
    public = key_for(KeyAlg.RSA_3072).public_key()
    for scheme in mtls.schemes_for(KeyAlg.RSA_3072):
        digest = os.urandom(scheme.digest_size)
        signature = se.sign_digest(digest, scheme.hash_name, scheme.family)
        assert len(signature) == 384
        verify(public, signature, digest, scheme)
    csr = se.create_csr()
    assert csr.is_signature_valid
    assert csr.public_key() == public


@pytest.mark.parametrize("alg", ALGS, ids=lambda a: a.name)
def test_public_key_and_epoch(alg: KeyAlg) -> None:
    card = ready_card(alg)
    se = open_session(card)
    info = se.identity()
    assert info.public_key == key_for(alg).public_key()
    assert info.epoch == 1
    assert info.alg is alg
    assert se.public_key() == key_for(alg).public_key()


def test_chain_round_trip_short_and_extended() -> None:
    card = ready_card(KeyAlg.EC_P256)
    leaf, ca = ca_and_leaf(key_for(KeyAlg.EC_P256).public_key())
    with pytest.raises(NoCredentialError) as err:
        open_session(card).chain()
    assert err.value.sw == SW.REFERENCED_DATA_NOT_FOUND
    for extended in (False, True):
        se = open_session(card, extended=extended)
        se.install_chain([leaf, ca])
        assert se.chain() == [leaf, ca]
        assert open_session(card, extended=not extended).chain() == [leaf, ca]


def test_a_three_certificate_chain_spans_several_short_apdus() -> None:
    card = ready_card(KeyAlg.RSA_2048)
    root_key = rsa.generate_private_key(65537, 2048)
    root = make_cert("root", root_key.public_key(), root_key, ca=True)
    mid_key = ec.generate_private_key(ec.SECP384R1())
    mid = make_cert("intermediate", mid_key.public_key(), root_key, root.subject, ca=True)
    leaf = make_cert("device", key_for(KeyAlg.RSA_2048).public_key(), mid_key, mid.subject)
    se = open_session(card)
    se.install_chain([leaf, mid, root])
    assert sum(len(c.public_bytes(serialization.Encoding.DER)) for c in se.chain()) > 255
    assert se.chain() == [leaf, mid, root]


# -- refused schemes -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("alg", "scheme"),
    [
        (KeyAlg.EC_P256, SignScheme.RSA_PSS_SHA256),
        (KeyAlg.EC_P256, SignScheme.RSA_PKCS1_SHA256),
        (KeyAlg.EC_P256, SignScheme.ECDSA_SHA384),  # ECDSA is bound to the curve's hash
        (KeyAlg.EC_P384, SignScheme.ECDSA_SHA256),
        (KeyAlg.RSA_2048, SignScheme.ECDSA_SHA256),
        (KeyAlg.RSA_2048, SignScheme.ECDSA_SHA384),
    ],
)
def test_scheme_not_fitting_the_key_is_6a86(alg: KeyAlg, scheme: SignScheme) -> None:
    card = ready_card(alg, [(Dgi.SIGN_SCHEMES, bytes([mtls.ALL_SCHEME_BITS]))])
    se = open_session(card)
    before = snapshot(card)
    with pytest.raises(SchemeNotAllowedError) as err:
        se.sign_digest(bytes(scheme.digest_size), scheme.hash_name, scheme.family)
    assert err.value.sw == SW.INCORRECT_P1P2
    assert snapshot(card) == before


def test_scheme_not_allowed_by_personalisation_is_6a86() -> None:
    card = ready_card(KeyAlg.RSA_2048, perso_dgis({"rsa-pss-sha256"}))
    se = open_session(card)
    se.sign_digest(bytes(32), "sha256", "pss")
    for scheme in ("pkcs1", "pss"):
        for hash_name in ("sha256", "sha384"):
            if (scheme, hash_name) == ("pss", "sha256"):
                continue
            with pytest.raises(SchemeNotAllowedError):
                se.sign_digest(bytes(mtls.DIGEST_SIZES[hash_name]), hash_name, scheme)


# -- negative matrix -----------------------------------------------------------------------------
def _valid_commands(card: Card) -> list[tuple[Ins, int, bytes]]:
    leaf, _ = ca_and_leaf(key_for(KeyAlg.EC_P256).public_key())
    return [
        (Ins.SIGN_DIGEST, SignScheme.ECDSA_SHA256, bytes(32)),
        (Ins.GET_PUBLIC_KEY, 0, b""),
        (Ins.PUT_CERT_CHAIN, 0, leaf.public_bytes(serialization.Encoding.DER)),
        (Ins.GET_CERT_CHAIN, 0, b""),
        (Ins.CREATE_CSR, 0, b""),
        (Ins.CREATE_CSR, 0, tlv(Tag.COMMON_NAME, b"device")),
    ]


def test_every_command_before_personalisation_is_6985() -> None:
    card = new_card()
    provision(card, key_for(KeyAlg.EC_P256))  # even with an identity key present
    se = MtlsSession(SmartCardProtocol(LoopbackConnection(card)))
    before = snapshot(card)
    for ins, p1, data in _valid_commands(card):
        assert raw_sw(se, ins, p1, 0, data) == SW.CONDITIONS_NOT_SATISFIED, ins.name
    assert snapshot(card) == before
    with pytest.raises(NotPersonalisedError):
        se.create_csr()
    with pytest.raises(NotPersonalisedError):
        se.sign_digest(bytes(32), "sha256", "ecdsa")


def test_every_command_without_an_identity_key_is_6985() -> None:
    card = new_card()
    personalise(card)
    se = open_session(card)
    before = snapshot(card)
    for ins, p1, data in _valid_commands(card):
        assert raw_sw(se, ins, p1, 0, data) == SW.CONDITIONS_NOT_SATISFIED, ins.name
    assert snapshot(card) == before
    with pytest.raises(NotPersonalisedError):
        se.public_key()


def test_the_valid_commands_succeed_once_ready() -> None:
    """The matrix above is meaningful: the same commands pass on a ready card."""
    card = ready_card(KeyAlg.EC_P256)
    se = open_session(card)
    statuses = [raw_sw(se, ins, p1, 0, data) for ins, p1, data in _valid_commands(card)]
    # PUT CERT CHAIN comes before GET CERT CHAIN in the list, so every one answers 9000.
    assert statuses == [SW.OK] * len(statuses)


@pytest.mark.parametrize(
    ("ins", "p1", "p2", "data"),
    [
        (Ins.SIGN_DIGEST, SignScheme.ECDSA_SHA256, 0x01, bytes(32)),
        (Ins.SIGN_DIGEST, 0x00, 0x00, bytes(32)),
        (Ins.SIGN_DIGEST, 0x03, 0x00, bytes(32)),
        (Ins.SIGN_DIGEST, 0xFF, 0x00, bytes(32)),
        (Ins.GET_PUBLIC_KEY, 0x01, 0x00, b""),
        (Ins.GET_PUBLIC_KEY, 0x00, 0x01, b""),
        (Ins.PUT_CERT_CHAIN, 0x01, 0x00, b"\x30\x00"),
        (Ins.GET_CERT_CHAIN, 0x00, 0x80, b""),
        (Ins.CREATE_CSR, 0x80, 0x00, b""),
    ],
)
def test_wrong_p1_p2_is_6a86(ins: Ins, p1: int, p2: int, data: bytes) -> None:
    card = ready_card(KeyAlg.EC_P256)
    se = open_session(card)
    before = snapshot(card)
    assert raw_sw(se, ins, p1, p2, data) == SW.INCORRECT_P1P2
    assert snapshot(card) == before


def _bad_data_cases() -> list[tuple[str, Ins, int, bytes, int]]:
    leaf, ca = ca_and_leaf(key_for(KeyAlg.EC_P256).public_key())
    der = leaf.public_bytes(serialization.Encoding.DER)
    ca_der = ca.public_bytes(serialization.Encoding.DER)
    other, _ = ca_and_leaf(ec.generate_private_key(ec.SECP256R1()).public_key())
    tampered = bytearray(der)
    tampered[-5] ^= 0x01  # the leaf's signature no longer verifies under the CA
    p256 = SignScheme.ECDSA_SHA256
    return [
        ("digest 31", Ins.SIGN_DIGEST, p256, bytes(31), SW.WRONG_LENGTH),
        ("digest 33", Ins.SIGN_DIGEST, p256, bytes(33), SW.WRONG_LENGTH),
        ("digest 48 for sha256", Ins.SIGN_DIGEST, p256, bytes(48), SW.WRONG_LENGTH),
        ("digest empty", Ins.SIGN_DIGEST, p256, b"", SW.WRONG_LENGTH),
        ("pubkey with data", Ins.GET_PUBLIC_KEY, 0, b"\x00", SW.WRONG_LENGTH),
        ("get chain with data", Ins.GET_CERT_CHAIN, 0, b"\x00", SW.WRONG_LENGTH),
        ("chain empty", Ins.PUT_CERT_CHAIN, 0, b"", SW.WRONG_LENGTH),
        ("chain garbage", Ins.PUT_CERT_CHAIN, 0, b"\x01\x02\x03", SW.WRONG_DATA),
        ("chain not a sequence", Ins.PUT_CERT_CHAIN, 0, b"\x04\x02ab", SW.WRONG_DATA),
        ("chain truncated", Ins.PUT_CERT_CHAIN, 0, der[:-1], SW.WRONG_DATA),
        ("chain trailing byte", Ins.PUT_CERT_CHAIN, 0, der + b"\x00", SW.WRONG_DATA),
        ("chain empty sequence", Ins.PUT_CERT_CHAIN, 0, b"\x30\x00", SW.WRONG_DATA),
        (
            "chain leaf is another key",
            Ins.PUT_CERT_CHAIN,
            0,
            other.public_bytes(serialization.Encoding.DER),
            SW.WRONG_DATA,
        ),
        ("chain CA first", Ins.PUT_CERT_CHAIN, 0, ca_der + der, SW.WRONG_DATA),
        ("chain bad signature", Ins.PUT_CERT_CHAIN, 0, bytes(tampered) + ca_der, SW.WRONG_DATA),
        (
            "chain unrelated issuer",
            Ins.PUT_CERT_CHAIN,
            0,
            der + other.public_bytes(serialization.Encoding.DER),
            SW.WRONG_DATA,
        ),
        ("chain too many", Ins.PUT_CERT_CHAIN, 0, der + ca_der * 8, SW.NOT_ENOUGH_MEMORY),
        (
            "chain too long",
            Ins.PUT_CERT_CHAIN,
            0,
            der * (mtls.MAX_CHAIN_BYTES // len(der) + 1),
            SW.NOT_ENOUGH_MEMORY,
        ),
        ("csr wrong tag", Ins.CREATE_CSR, 0, tlv(0x81, b"device"), SW.WRONG_DATA),
        ("csr truncated tlv", Ins.CREATE_CSR, 0, b"\x80\x05abc", SW.WRONG_DATA),
        ("csr two objects", Ins.CREATE_CSR, 0, tlv(0x80, b"a") + tlv(0x80, b"b"), SW.WRONG_DATA),
        ("csr trailing byte", Ins.CREATE_CSR, 0, tlv(0x80, b"a") + b"\x00", SW.WRONG_DATA),
        ("csr empty name", Ins.CREATE_CSR, 0, tlv(0x80, b""), SW.WRONG_DATA),
        ("csr name too long", Ins.CREATE_CSR, 0, tlv(0x80, b"x" * 65), SW.WRONG_DATA),
        ("csr not utf-8", Ins.CREATE_CSR, 0, tlv(0x80, b"\xff\xfe"), SW.WRONG_DATA),
        ("csr control char", Ins.CREATE_CSR, 0, tlv(0x80, b"a\nb"), SW.WRONG_DATA),
    ]


@pytest.mark.parametrize("case", _bad_data_cases(), ids=lambda c: c[0])
def test_malformed_data_objects(case: tuple[str, Ins, int, bytes, int]) -> None:
    _, ins, p1, data, sw = case
    card = ready_card(KeyAlg.EC_P256)
    se = open_session(card)
    leaf, ca = ca_and_leaf(key_for(KeyAlg.EC_P256).public_key())
    se.install_chain([leaf, ca])  # a previous chain must survive a refused PUT untouched
    before = snapshot(card)
    assert raw_sw(se, ins, p1, 0, data) == sw
    assert snapshot(card) == before
    assert se.chain() == [leaf, ca]


def test_cla_and_unknown_instruction() -> None:
    card = ready_card(KeyAlg.EC_P256)
    se = open_session(card)
    before = snapshot(card)
    assert se.protocol.send(CommandApdu(0x00, Ins.GET_PUBLIC_KEY, 0, 0)).sw == SW.CLA_NOT_SUPPORTED
    assert se.protocol.send(CommandApdu(CLA_IOTID, 0x20, 0, 0)).sw == SW.INS_NOT_SUPPORTED
    assert snapshot(card) == before


def test_host_refuses_bad_arguments_before_sending() -> None:
    card = ready_card(KeyAlg.EC_P256)
    se = open_session(card)
    with pytest.raises(ValueError, match="digest"):
        se.sign_digest(bytes(31), "sha256", "ecdsa")
    with pytest.raises(ValueError):
        se.sign_digest(bytes(64), "sha512", "ecdsa")
    with pytest.raises(ValueError):
        se.sign_digest(bytes(32), "sha256", "eddsa")
    with pytest.raises(ValueError):
        se.create_csr("x" * 65)
    with pytest.raises(ValueError):
        se.create_csr("")
    with pytest.raises(ValueError):
        se.install_chain([])


def test_host_maps_chain_refusals_to_typed_errors() -> None:
    card = ready_card(KeyAlg.EC_P256)
    se = open_session(card)
    other_leaf, other_ca = ca_and_leaf(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(ChainRejectedError) as err:
        se.install_chain([other_leaf, other_ca])
    assert err.value.sw == SW.WRONG_DATA
    leaf, ca = ca_and_leaf(key_for(KeyAlg.EC_P256).public_key())
    with pytest.raises(ChainTooLargeError):
        se.install_chain([leaf] + [ca] * 8)
    with pytest.raises(NoCredentialError):
        se.chain()


# -- personalisation -----------------------------------------------------------------------------
def _life_cycle(card: Card) -> int:
    return card.app_life_cycle(mtls.AID)


@pytest.mark.parametrize(
    ("dgis", "sw"),
    [
        ([(Dgi.SIGN_SCHEMES, b"")], SW.WRONG_DATA),
        ([(Dgi.SIGN_SCHEMES, b"\x00")], SW.WRONG_DATA),
        ([(Dgi.SIGN_SCHEMES, b"\x40")], SW.WRONG_DATA),
        ([(Dgi.SIGN_SCHEMES, b"\x81")], SW.WRONG_DATA),
        ([(Dgi.SIGN_SCHEMES, b"\x01\x01")], SW.WRONG_DATA),
        ([(0x0302, b"\x01")], SW.REFERENCED_DATA_NOT_FOUND),
        ([(0x8301, b"\x01" * 16)], SW.REFERENCED_DATA_NOT_FOUND),
        ([], SW.CONDITIONS_NOT_SATISFIED),  # mandatory DGI 0301 missing
    ],
)
def test_personalisation_errors(dgis: list[tuple[int, bytes]], sw: int) -> None:
    card = new_card()
    before = snapshot(card, personalising=True)
    with pytest.raises(ApduError) as err:
        personalise(card, dgis)
    assert err.value.sw == sw
    assert snapshot(card, personalising=True) == before
    assert _life_cycle(card) == AppLifeCycle.SELECTABLE


def test_personalisation_sets_the_life_cycle_and_is_final() -> None:
    card = new_card()
    personalise(card, perso_dgis({"ecdsa-sha256"}))
    assert _life_cycle(card) == APP_PERSONALISED
    before = snapshot(card, personalising=True)
    with pytest.raises(ApduError) as err:
        personalise(card, perso_dgis())
    assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert snapshot(card, personalising=True) == before


def test_perso_dgis() -> None:
    assert perso_dgis() == [(Dgi.SIGN_SCHEMES, bytes([mtls.ALL_SCHEME_BITS]))]
    assert perso_dgis(alg=KeyAlg.EC_P256) == [(Dgi.SIGN_SCHEMES, bytes([SchemeBit.ECDSA_SHA256]))]
    assert perso_dgis(alg=KeyAlg.EC_P384) == [(Dgi.SIGN_SCHEMES, bytes([SchemeBit.ECDSA_SHA384]))]
    rsa_bits = (
        SchemeBit.RSA_PSS_SHA256
        | SchemeBit.RSA_PSS_SHA384
        | SchemeBit.RSA_PKCS1_SHA256
        | SchemeBit.RSA_PKCS1_SHA384
    )
    assert perso_dgis(alg=KeyAlg.RSA_3072) == [(Dgi.SIGN_SCHEMES, bytes([rsa_bits]))]
    assert perso_dgis({"RSA-PSS-SHA256", "rsa-pkcs1-sha384"}) == [
        (Dgi.SIGN_SCHEMES, bytes([SchemeBit.RSA_PSS_SHA256 | SchemeBit.RSA_PKCS1_SHA384]))
    ]
    with pytest.raises(ValueError):
        perso_dgis(set())
    with pytest.raises(ValueError):
        perso_dgis({"ed25519"})
    with pytest.raises(ValueError):
        perso_dgis({"ecdsa-sha384"}, alg=KeyAlg.EC_P256)


# -- secrecy -------------------------------------------------------------------------------------
class _Recorder(LoopbackConnection):
    def __init__(self, card: Card) -> None:
        super().__init__(card)
        self.responses: list[bytes] = []

    def transmit(self, apdu: bytes) -> bytes:
        resp = super().transmit(apdu)
        self.responses.append(resp)
        return resp


def _secret_fragments(key: PrivateKey) -> Iterator[bytes]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        yield key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")
    else:
        numbers = key.private_numbers()
        for value in (numbers.d, numbers.p, numbers.q):
            yield value.to_bytes((value.bit_length() + 7) // 8, "big")[:32]


@pytest.mark.parametrize("alg", [KeyAlg.EC_P256, KeyAlg.RSA_2048], ids=lambda a: a.name)
def test_no_private_key_byte_leaves_the_card(alg: KeyAlg) -> None:
    card = ready_card(alg)
    conn = _Recorder(card)
    se = MtlsSession(SmartCardProtocol(conn))
    se.identity()
    for scheme in mtls.schemes_for(alg):
        se.sign_digest(os.urandom(scheme.digest_size), scheme.hash_name, scheme.family)
    se.create_csr("device")
    leaf, ca = ca_and_leaf(key_for(alg).public_key())
    se.install_chain([leaf, ca])
    se.chain()
    stream = b"".join(conn.responses)
    assert len(conn.responses) >= 6
    for fragment in _secret_fragments(key_for(alg)):
        assert fragment not in stream
    assert "PRIVATE" not in repr(se) + repr(card.applet(mtls.AID))


# -- random input --------------------------------------------------------------------------------
_FUZZ_CARD: list[Card] = []


def _fuzz_card() -> Card:
    if not _FUZZ_CARD:
        _FUZZ_CARD.append(ready_card(KeyAlg.EC_P256))
    return _FUZZ_CARD[0]


@settings(max_examples=300)
@given(
    ins=st.sampled_from(list(Ins)),
    p1=st.sampled_from([0x00, 0x01, 0x02, 0x11, 0x22, 0xFF]),
    p2=st.sampled_from([0x00, 0x01]),
    data=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=60).map(lambda b: b"\x30" + bytes([len(b)]) + b),
        st.binary(max_size=70).map(lambda b: tlv(Tag.COMMON_NAME, b)),
    ),
)
def test_random_commands_never_crash_or_change_state(
    ins: Ins, p1: int, p2: int, data: bytes
) -> None:
    card = _fuzz_card()
    se = open_session(card)
    before = snapshot(card)
    sw = raw_sw(se, ins, p1, p2, data)
    assert sw != SW.UNKNOWN
    if ins is not Ins.PUT_CERT_CHAIN or sw != SW.OK:
        assert snapshot(card) == before
    if sw != SW.OK:
        assert sw in (
            SW.WRONG_LENGTH,
            SW.WRONG_DATA,
            SW.INCORRECT_P1P2,
            SW.NOT_ENOUGH_MEMORY,
            SW.REFERENCED_DATA_NOT_FOUND,  # GET CERT CHAIN before any chain
        )

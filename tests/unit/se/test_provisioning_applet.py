"""The provisioning applet through its host session: personalisation, PROVISION, GET PUBLIC KEY,
GET STATE, the admin re-key ceremony, and the negative matrix (each refusal: a precise status
word and no NVM change).

Not covered here: kill -9 during PROVISION and REKEY
(tests/integration/test_provisioning_tearing.py), the derivation's known answers
(tests/unit/crypto/test_identity_kdf.py).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from iotid.apdu import ApduError
from iotid.crypto.identity_kdf import derive_identity_key
from iotid.host import SecurityDomainSession, SmartCardProtocol
from iotid.host.provisioning import (
    AlreadyProvisionedError,
    NotPersonalisedError,
    NotProvisionedError,
    ProvisioningSession,
    RekeyRefusedError,
    perso_dgis,
    rekey_tbs,
)
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.provisioning import ProvisioningApplet
from iotid.spec import provisioning as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.identity import APP_PERSONALISED, CLA_IOTID
from iotid.spec.iso7816 import SW
from iotid.spec.provisioning import Dgi, Ins
from iotid.transport.loopback import LoopbackConnection

UID = bytes.fromhex("00112233445566778899")
MASTER = bytes(range(0x10, 0x30))
OPERATOR = ec.derive_private_key(0x1D2E3F, ec.SECP256R1())
OPERATOR_384 = ec.derive_private_key(0x4A5B6C, ec.SECP384R1())
INTRUDER = ec.derive_private_key(0x777, ec.SECP256R1())

Snapshot = dict[str, bytes | None]


def snapshot(card: Card) -> Snapshot:
    return {k: card.nvm.get(k) for k in card.nvm.keys(prefix="")}


def new_card(uid: bytes | None = UID) -> Card:
    return Card.create(None, uid=uid, applets=[ProvisioningApplet])


def perso_session(card: Card) -> SecurityDomainSession:
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(spec.AID)
    return sd


def personalise(
    card: Card,
    alg: KeyAlg = KeyAlg.EC_P256,
    operator: ec.EllipticCurvePrivateKey = OPERATOR,
) -> None:
    perso_session(card).store_data(perso_dgis(MASTER, alg, operator.public_key()))


def session(card: Card) -> ProvisioningSession:
    return ProvisioningSession(SmartCardProtocol(LoopbackConnection(card)))


def sign(tbs: bytes, key: ec.EllipticCurvePrivateKey = OPERATOR) -> bytes:
    h = hashes.SHA384() if key.curve.name == "secp384r1" else hashes.SHA256()
    return key.sign(tbs, ec.ECDSA(h))


def authorise(s: ProvisioningSession, key: ec.EllipticCurvePrivateKey = OPERATOR) -> bytes:
    """The operator's side: a fresh challenge, signed for this card."""
    nonce = s.rekey_challenge()
    st = s.state()
    return sign(rekey_tbs(st.uid, st.rekey_counter, nonce), key)


def raw(s: ProvisioningSession, ins: int, p1: int = 0, p2: int = 0, data: bytes = b"") -> int:
    """Send a command and return its status word."""
    try:
        s.protocol.transmit(CLA_IOTID, ins, p1, p2, data)
    except ApduError as exc:
        return exc.sw
    return int(SW.OK)


def spki(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def card() -> Card:
    c = new_card()
    personalise(c)
    return c


# -- personalisation and PROVISION ------------------------------------------------------------
@pytest.mark.parametrize("alg", [KeyAlg.EC_P256, KeyAlg.EC_P384])
def test_provision_gives_the_factorys_key(alg: KeyAlg) -> None:
    c = new_card()
    personalise(c, alg)
    assert c.registry.get(spec.AID) is not None
    assert c.app_life_cycle(spec.AID) == APP_PERSONALISED
    s = session(c)
    before = s.state()
    assert (before.provisioned, before.epoch, before.generation, before.rekey_counter) == (
        False,
        0,
        0,
        0,
    )
    assert before.alg is alg and before.uid == UID and not before.challenge_pending

    public = s.provision()
    expected = derive_identity_key(MASTER, UID, alg).public_key()
    assert spki(public) == spki(expected)
    info = s.public_key()
    assert spki(info.public_key) == spki(expected)
    assert info.epoch == 1 and info.alg is alg
    assert info.spki_der() == spki(expected)
    assert info.pem().startswith("-----BEGIN PUBLIC KEY-----")
    after = s.state()
    assert after.provisioned and after.epoch == 1 and after.generation == 0


def test_factory_equivalence_with_a_random_uid() -> None:
    c = new_card(uid=None)
    personalise(c, KeyAlg.EC_P384)
    public = session(c).provision()
    assert spki(public) == spki(derive_identity_key(MASTER, c.uid, KeyAlg.EC_P384).public_key())


def test_the_key_signs_inside_the_card(card: Card) -> None:
    """The derived key went into the shared identity slot: the store signs with it."""
    public = session(card).provision()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    store = card.applet(spec.AID)
    assert isinstance(store, ProvisioningApplet)
    with card.nvm.transaction():
        signature = store.identity.sign(b"message", "sha256")
    public.verify(signature, b"message", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize("alg", [KeyAlg.RSA_2048, KeyAlg.RSA_3072])
def test_rsa_identity_is_generated_on_the_card(alg: KeyAlg) -> None:
    c = new_card()
    personalise(c, alg)
    s = session(c)
    public = s.provision()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == alg.size_bits and public.public_numbers().e == 65537
    info = s.public_key()  # a 3072-bit SPKI spans several short responses (61xx)
    assert info.alg is alg and spki(info.public_key) == spki(public)
    with pytest.raises(AlreadyProvisionedError):
        s.provision()


def test_second_provision_is_refused_with_no_change(card: Card) -> None:
    s = session(card)
    first = s.provision()
    before = snapshot(card)
    assert raw(s, Ins.PROVISION) == SW.CONDITIONS_NOT_SATISFIED
    with pytest.raises(AlreadyProvisionedError) as err:
        s.provision()
    assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert snapshot(card) == before
    assert spki(s.public_key().public_key) == spki(first)


# -- before personalisation -------------------------------------------------------------------
def test_every_command_before_personalisation_answers_6985() -> None:
    c = new_card()
    s = session(c)
    before = snapshot(c)
    for ins in Ins:
        data = b"\x30\x06\x02\x01\x01\x02\x01\x01" if ins is Ins.REKEY else b""
        assert raw(s, ins, data=data) == SW.CONDITIONS_NOT_SATISFIED, ins.name
    calls: list[Callable[[], object]] = [
        s.provision,
        s.public_key,
        s.state,
        s.rekey_challenge,
        lambda: s.rekey(sign(b"x")),
    ]
    for call in calls:
        with pytest.raises(NotPersonalisedError):
            call()
    assert snapshot(c) == before


def test_incomplete_personalisation_is_refused() -> None:
    c = new_card()
    sd = perso_session(c)
    before = snapshot(c)
    dgis = perso_dgis(MASTER, KeyAlg.EC_P256, OPERATOR.public_key())
    with pytest.raises(ApduError) as err:
        sd.store_data([d for d in dgis if d[0] != Dgi.REKEY_AUTHORITY])
    assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert snapshot(c) == before
    with pytest.raises(NotPersonalisedError):
        session(c).state()


def _other_spki() -> dict[str, bytes]:
    p521 = ec.derive_private_key(5, ec.SECP521R1()).public_key()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    good = spki(OPERATOR.public_key())
    return {
        "garbage": b"\x30\x03\x02\x01\x01",
        "empty": b"",
        "rsa": spki(rsa_key),
        "p521": spki(p521),
        "trailing byte": good + b"\x00",
        "truncated": good[:-1],
    }


MALFORMED: list[tuple[str, int, bytes, int]] = [
    ("master 15 bytes", Dgi.MASTER_KEY, MASTER[:15], SW.WRONG_DATA),
    ("master 65 bytes", Dgi.MASTER_KEY, bytes(65), SW.WRONG_DATA),
    ("alg empty", Dgi.IDENTITY_ALG, b"", SW.WRONG_DATA),
    ("alg 2 bytes", Dgi.IDENTITY_ALG, bytes([KeyAlg.EC_P256, 0]), SW.WRONG_DATA),
    ("alg AES", Dgi.IDENTITY_ALG, bytes([KeyAlg.AES_128]), SW.WRONG_DATA),
    ("alg unknown", Dgi.IDENTITY_ALG, b"\x99", SW.WRONG_DATA),
    *[
        (f"authority {name}", Dgi.REKEY_AUTHORITY, value, SW.WRONG_DATA)
        for name, value in _other_spki().items()
    ],
    ("unknown DGI", 0x0103, b"\x01", SW.REFERENCED_DATA_NOT_FOUND),
    ("unknown secret DGI", 0x8102, MASTER, SW.REFERENCED_DATA_NOT_FOUND),
]


@pytest.mark.parametrize(
    ("dgi", "value", "sw"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_dgis_are_refused_with_no_change(dgi: int, value: bytes, sw: int) -> None:
    c = new_card()
    sd = perso_session(c)
    before = snapshot(c)
    with pytest.raises(ApduError) as err:
        sd.store_data([(dgi, value)])
    assert err.value.sw == sw
    assert snapshot(c) == before
    assert c.app_life_cycle(spec.AID) != APP_PERSONALISED


def test_personalisation_after_completion_is_refused(card: Card) -> None:
    sd = perso_session(card)
    before = snapshot(card)
    for dgis in (
        perso_dgis(MASTER[::-1], KeyAlg.EC_P384, INTRUDER.public_key()),
        [(Dgi.IDENTITY_ALG, bytes([KeyAlg.EC_P384]))],
    ):
        with pytest.raises(ApduError) as err:
            sd.store_data(dgis)
        assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert snapshot(card) == before


# -- command coding ----------------------------------------------------------------------------
@pytest.mark.parametrize("ins", list(Ins))
def test_wrong_p1_p2_length_and_class(card: Card, ins: Ins) -> None:
    s = session(card)
    s.provision()
    before = snapshot(card)
    data = sign(b"x") if ins is Ins.REKEY else b""
    assert raw(s, ins, p1=0x01, data=data) == SW.INCORRECT_P1P2
    assert raw(s, ins, p2=0x80, data=data) == SW.INCORRECT_P1P2
    if ins is Ins.REKEY:
        assert raw(s, ins) == SW.WRONG_LENGTH
        assert raw(s, ins, data=bytes(spec.REKEY_SIGNATURE_MAX + 1)) == SW.WRONG_LENGTH
    else:
        assert raw(s, ins, data=b"\x00") == SW.WRONG_LENGTH
    try:
        s.protocol.transmit(0x00, ins, 0, 0, data)
    except ApduError as exc:
        assert exc.sw == SW.CLA_NOT_SUPPORTED
    else:
        pytest.fail("CLA 00 accepted")
    assert snapshot(card) == before


def test_public_key_and_challenge_need_an_identity_key(card: Card) -> None:
    s = session(card)
    before = snapshot(card)
    with pytest.raises(NotProvisionedError):
        s.public_key()
    with pytest.raises(NotProvisionedError):
        s.rekey_challenge()
    with pytest.raises(RekeyRefusedError) as err:
        s.rekey(sign(b"anything"))
    assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert snapshot(card) == before


# -- the admin re-key ceremony -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("alg", "operator"), [(KeyAlg.EC_P256, OPERATOR), (KeyAlg.EC_P384, OPERATOR_384)]
)
def test_authorised_rekey_allows_a_new_derived_key(
    alg: KeyAlg, operator: ec.EllipticCurvePrivateKey
) -> None:
    c = new_card()
    personalise(c, alg, operator)
    s = session(c)
    first = s.provision()
    signature = authorise(s, operator)
    assert s.state().challenge_pending
    s.rekey(signature)

    st = s.state()
    assert (st.provisioned, st.generation, st.rekey_counter, st.challenge_pending) == (
        False,
        1,
        1,
        False,
    )
    with pytest.raises(NotProvisionedError):
        s.public_key()
    second = s.provision()
    assert spki(second) != spki(first)
    assert spki(second) == spki(derive_identity_key(MASTER, UID, alg, generation=1).public_key())
    assert s.public_key().epoch == 2
    with pytest.raises(AlreadyProvisionedError):
        s.provision()


def _refused(card: Card, s: ProvisioningSession, signature: bytes, sw: int) -> None:
    before = snapshot(card)
    with pytest.raises(RekeyRefusedError) as err:
        s.rekey(signature)
    assert err.value.sw == sw
    assert snapshot(card) == before


def test_wrong_signatures_change_nothing_and_burn_nothing(card: Card) -> None:
    s = session(card)
    s.provision()
    nonce = s.rekey_challenge()
    good_tbs = rekey_tbs(UID, 0, nonce)
    refused = SW.SECURITY_STATUS_NOT_SATISFIED
    _refused(card, s, sign(good_tbs, INTRUDER), refused)  # not the operator
    _refused(card, s, sign(rekey_tbs(bytes(10), 0, nonce)), refused)  # another card's UID
    _refused(card, s, sign(rekey_tbs(UID, 1, nonce)), refused)  # another counter
    _refused(card, s, sign(rekey_tbs(UID, 0, bytes(16))), refused)  # another nonce
    _refused(card, s, OPERATOR.sign(good_tbs, ec.ECDSA(hashes.SHA384())), refused)  # wrong hash
    r, s_ = decode_dss_signature(sign(good_tbs))
    _refused(card, s, encode_dss_signature(r, (s_ + 1)), refused)  # tampered
    _refused(card, s, b"\x30\x00", SW.WRONG_DATA)  # not an ECDSA-Sig-Value
    _refused(card, s, sign(good_tbs) + b"\x00", SW.WRONG_DATA)  # trailing byte
    st = s.state()
    assert st.provisioned and st.generation == 0 and st.rekey_counter == 0
    assert st.challenge_pending
    # Nothing was burned: the same challenge still authorises the operator's signature.
    s.rekey(sign(good_tbs))
    assert s.state().generation == 1


def test_a_signature_is_single_use(card: Card) -> None:
    s = session(card)
    s.provision()
    signature = authorise(s)
    s.rekey(signature)
    s.provision()
    # No challenge outstanding: the replay is refused before any verification.
    _refused(card, s, signature, SW.CONDITIONS_NOT_SATISFIED)
    # With a fresh challenge outstanding, the old signature does not verify.
    s.rekey_challenge()
    _refused(card, s, signature, SW.SECURITY_STATUS_NOT_SATISFIED)
    assert s.state().generation == 1


def test_a_new_challenge_invalidates_the_previous_one(card: Card) -> None:
    s = session(card)
    s.provision()
    first = s.rekey_challenge()
    second = s.rekey_challenge()
    assert first != second and len(second) == spec.NONCE_LEN
    _refused(card, s, sign(rekey_tbs(UID, 0, first)), SW.SECURITY_STATUS_NOT_SATISFIED)
    s.rekey(sign(rekey_tbs(UID, 0, second)))


def test_a_signature_for_another_card_is_refused() -> None:
    """Two cards of one batch: the operator's authorisation for one does not re-key the other."""
    a, b = new_card(UID), new_card(bytes.fromhex("99887766554433221100"))
    personalise(a)
    personalise(b)
    sa, sb = session(a), session(b)
    sa.provision()
    sb.provision()
    signature_for_a = authorise(sa)
    sb.rekey_challenge()
    _refused(b, sb, signature_for_a, SW.SECURITY_STATUS_NOT_SATISFIED)
    sa.rekey(signature_for_a)
    assert sa.state().generation == 1 and sb.state().generation == 0


def test_two_rekeys_advance_the_generation(card: Card) -> None:
    s = session(card)
    keys = [spki(s.provision())]
    for generation in (1, 2):
        s.rekey(authorise(s))
        keys.append(spki(s.provision()))
        assert keys[-1] == spki(
            derive_identity_key(MASTER, UID, KeyAlg.EC_P256, generation).public_key()
        )
    assert len(set(keys)) == 3
    st = s.state()
    assert (st.generation, st.rekey_counter, st.epoch) == (2, 2, 3)


# -- secrecy and host-side helpers ---------------------------------------------------------------
class Recording(LoopbackConnection):
    def __init__(self, card: Card) -> None:
        super().__init__(card)
        self.responses: list[bytes] = []

    def transmit(self, apdu: bytes) -> bytes:
        response = super().transmit(apdu)
        self.responses.append(response)
        return response


def test_no_secret_leaves_the_card(card: Card) -> None:
    conn = Recording(card)
    s = ProvisioningSession(SmartCardProtocol(conn))
    s.provision()
    s.public_key()
    s.state()
    s.rekey(authorise(s))
    s.provision()
    d0 = derive_identity_key(MASTER, UID, KeyAlg.EC_P256).private_numbers().private_value
    d1 = derive_identity_key(MASTER, UID, KeyAlg.EC_P256, 1).private_numbers().private_value
    secrets_ = [MASTER, d0.to_bytes(32, "big"), d1.to_bytes(32, "big")]
    assert len(conn.responses) >= 8
    for response in conn.responses:
        assert not any(secret in response for secret in secrets_)
    applet = card.applet(spec.AID)
    for text in (repr(applet), repr(s), repr(s.state()), repr(card.keys)):
        assert MASTER.hex() not in text.lower()


def test_perso_dgis_checks_its_inputs() -> None:
    dgis = perso_dgis(MASTER, KeyAlg.EC_P384, OPERATOR_384.public_key())
    assert dict(dgis) == {
        Dgi.IDENTITY_ALG: bytes([KeyAlg.EC_P384]),
        Dgi.REKEY_AUTHORITY: spki(OPERATOR_384.public_key()),
        Dgi.MASTER_KEY: MASTER,
    }
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    p521 = ec.derive_private_key(5, ec.SECP521R1()).public_key()
    bad: list[tuple[bytes, KeyAlg, object]] = [
        (MASTER[:15], KeyAlg.EC_P256, OPERATOR.public_key()),
        (bytes(65), KeyAlg.EC_P256, OPERATOR.public_key()),
        (MASTER, KeyAlg.AES_256, OPERATOR.public_key()),
        (MASTER, KeyAlg.EC_P256, rsa_key),
        (MASTER, KeyAlg.EC_P256, p521),
    ]
    for master, alg, operator in bad:
        with pytest.raises(ValueError) as err:
            perso_dgis(master, alg, operator)  # type: ignore[arg-type]
        assert master.hex() not in str(err.value)


def test_rekey_tbs_layout() -> None:
    nonce = bytes(range(16))
    tbs = rekey_tbs(UID, 0x01020304, nonce)
    assert tbs == b"iotid-rekey-v1" + UID + b"\x01\x02\x03\x04" + nonce
    for args in ((b"", 0, nonce), (UID, -1, nonce), (UID, 1 << 32, nonce), (UID, 0, nonce[:15])):
        with pytest.raises(ValueError):
            rekey_tbs(*args)

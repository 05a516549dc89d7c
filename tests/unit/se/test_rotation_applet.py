"""The key rotation applet through its host session (DESIGN.md section 6.5).

Scope: the whole rotation (P-256, P-384, RSA-2048): proof of continuity checked with the old key
and re-built here byte by byte from the spec's definition, commit with the authority's
acknowledgement, data encrypted to the old key decrypted after, data encrypted to the current
key decrypted (fleet commands), retention, purge; and the
negative matrix: every command before personalisation and before an identity key, bad P1/P2,
nonce lengths, absent/wrong/replayed acknowledgements, decryption failures, personalisation
errors, each answering a precise status word with the NVM unchanged.

Not covered: tearing (tests/integration/test_rotation_tearing.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from iotid.apdu import ApduError, CommandApdu
from iotid.crypto.ecies import encrypt_for
from iotid.host import SecurityDomainSession, SmartCardProtocol
from iotid.host.rotation import (
    AuthorisationRejectedError,
    DecryptionFailedError,
    InvalidProofError,
    NoPendingRotationError,
    RotationProof,
    RotationSession,
    RotationUnavailableError,
    UnknownEpochError,
    ack_tbs,
    perso_dgis,
    purge_tbs,
)
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.rotation import RotationApplet
from iotid.se.identity import ACTIVE_SLOT, PENDING_SLOT, IdentityStore
from iotid.spec import rotation as spec
from iotid.spec.algorithms import KeyAlg
from iotid.spec.identity import APP_PERSONALISED, CLA_IOTID
from iotid.spec.iso7816 import SW
from iotid.transport.loopback import LoopbackConnection

UID = bytes.fromhex("0102030405060708090A")
OTHER_UID = bytes.fromhex("0A090807060504030201")
NONCE = bytes(range(32))
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
Snapshot = dict[str, bytes | None]


def _rsa2048() -> PrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


ALGS: dict[str, Callable[[], PrivateKey]] = {
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": _rsa2048,
}


# -- helpers --------------------------------------------------------------------------------------
def sign_rule(key: PrivateKey, message: bytes) -> bytes:
    """The signature rule of iotid.spec.rotation, written out here from its docstring."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        algorithm = hashes.SHA384() if key.curve.name == "secp384r1" else hashes.SHA256()
        return key.sign(message, ec.ECDSA(algorithm))
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return key.sign(message, pss, hashes.SHA256())


def verify_rule(key: PublicKey, signature: bytes, message: bytes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = hashes.SHA384() if key.curve.name == "secp384r1" else hashes.SHA256()
        key.verify(signature, message, ec.ECDSA(algorithm))
    else:
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        key.verify(signature, message, pss, hashes.SHA256())


def spki(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def personalise(card: Card, dgis: list[tuple[int, bytes]]) -> None:
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(spec.AID)
    sd.store_data(dgis)


def provision(card: Card, key: PrivateKey) -> None:
    with card.nvm.transaction():
        IdentityStore(card.nvm, card.keys).provision(key)


def make_card(
    identity: PrivateKey | None,
    authority: PrivateKey,
    retention: int = 2,
    *,
    personalised: bool = True,
) -> Card:
    card = Card.create(None, uid=UID, applets=[RotationApplet])
    if personalised:
        personalise(card, perso_dgis(authority.public_key(), retention))
    if identity is not None:
        provision(card, identity)
    return card


def session(card: Card) -> RotationSession:
    return RotationSession(SmartCardProtocol(LoopbackConnection(card)))


def snapshot(card: Card) -> Snapshot:
    names = card.nvm.keys("")
    return {k: card.nvm.get(k) for k in names}


def raw_sw(s: RotationSession, ins: int, p1: int = 0, p2: int = 0, data: bytes = b"") -> int:
    return s.protocol.send(CommandApdu(CLA_IOTID, ins, p1, p2, data, 256)).sw


def active_public(card: Card) -> PublicKey:
    return IdentityStore(card.nvm, card.keys).active_public_key()


def ack(authority: PrivateKey, proof: RotationProof, uid: bytes = UID) -> bytes:
    return sign_rule(authority, proof.ack_tbs(uid))


@pytest.fixture(scope="module")
def keys() -> dict[str, PrivateKey]:
    return {name: make() for name, make in ALGS.items()}


@pytest.fixture(scope="module")
def authority() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def p256_card(keys: dict[str, PrivateKey], authority: ec.EllipticCurvePrivateKey) -> Card:
    return make_card(keys["p256"], authority)


# -- the whole rotation ---------------------------------------------------------------------------
@pytest.mark.parametrize("alg", list(ALGS))
def test_rotate_commit_and_decrypt_historical_data(
    alg: str, keys: dict[str, PrivateKey], authority: ec.EllipticCurvePrivateKey
) -> None:
    old = keys[alg]
    card = make_card(old, authority)
    s = session(card)
    state = s.state()
    assert (state.epoch, state.pending, state.retired_epochs, state.retention) == (1, False, (), 2)
    assert state.alg is KeyAlg.from_name(alg)
    historical = encrypt_for(old.public_key(), b"telemetry from epoch 1")

    proof = s.rotate(NONCE)
    assert proof.epoch == 2 and proof.nonce == NONCE
    proof.verify(old.public_key(), UID)
    # The TBS as the spec spells it, rebuilt here by hand, verifies with the old key.
    tbs = (
        b"iotid-rotate-v1"
        + UID
        + (2).to_bytes(4, "big")
        + hashlib.sha256(proof.public_key_der).digest()
        + NONCE
    )
    verify_rule(old.public_key(), proof.signature, tbs)
    assert proof.ack_tbs(UID) == ack_tbs(UID, 2, proof.public_key_der, NONCE)
    assert proof.ack_tbs(UID) == b"iotid-rotate-ack-v1" + tbs[len(b"iotid-rotate-v1") :]
    with pytest.raises(InvalidProofError):
        proof.verify(old.public_key(), OTHER_UID)
    with pytest.raises(InvalidProofError):
        proof.verify(ALGS[alg]().public_key(), UID)
    new = proof.public_key
    assert type(new) is type(old.public_key()) and new.key_size == old.key_size
    assert spki(new) != spki(old.public_key())
    # Pending: the old key is still the active one.
    assert s.state().pending and s.state().epoch == 1
    assert spki(active_public(card)) == spki(old.public_key())

    assert s.commit(ack(authority, proof)) == 2
    state = s.state()
    assert (state.epoch, state.pending, state.retired_epochs) == (2, False, (1,))
    assert spki(active_public(card)) == proof.public_key_der
    # The active key signs for the new public key.
    signed = IdentityStore(card.nvm, card.keys).sign(b"hello", KeyAlg.from_name(alg).hash_name)
    verify_rule(new, signed, b"hello")
    # Historical data encrypted to the old key decrypts through the retired key.
    assert s.decrypt(1, historical) == b"telemetry from epoch 1"
    # The current key decrypts what the fleet encrypts to it (commands) ...
    assert s.decrypt(2, encrypt_for(new, b"command for epoch 2")) == b"command for epoch 2"
    # ... but each epoch only its own key's blobs, and an epoch never reached is unknown.
    with pytest.raises(DecryptionFailedError):
        s.decrypt(2, historical)
    with pytest.raises(DecryptionFailedError):
        s.decrypt(1, encrypt_for(new, b"x"))
    with pytest.raises(UnknownEpochError):
        s.decrypt(3, encrypt_for(new, b"x"))


def test_retention_one_destroys_the_oldest_retired_key(
    keys: dict[str, PrivateKey], authority: ec.EllipticCurvePrivateKey
) -> None:
    card = make_card(keys["p256"], authority, retention=1)
    s = session(card)
    blob1 = encrypt_for(keys["p256"].public_key(), b"one")
    proof = s.rotate(NONCE)
    s.commit(ack(authority, proof))
    blob2 = encrypt_for(proof.public_key, b"two")
    proof = s.rotate(NONCE[::-1])
    assert s.commit(ack(authority, proof)) == 3
    assert s.state().retired_epochs == (2,)
    assert not card.keys.has("identity.retired.1")
    with pytest.raises(UnknownEpochError) as err:
        s.decrypt(1, blob1)
    assert err.value.sw == SW.REFERENCED_DATA_NOT_FOUND
    assert s.decrypt(2, blob2) == b"two"


def test_retention_zero_keeps_no_retired_key(
    keys: dict[str, PrivateKey], authority: ec.EllipticCurvePrivateKey
) -> None:
    card = make_card(keys["p256"], authority, retention=0)
    s = session(card)
    blob = encrypt_for(keys["p256"].public_key(), b"gone")
    s.commit(ack(authority, s.rotate(NONCE)))
    assert s.state().retired_epochs == ()
    with pytest.raises(UnknownEpochError):
        s.decrypt(1, blob)


@pytest.mark.parametrize("authority_alg", ["p384", "rsa2048"])
def test_other_authority_algorithms(authority_alg: str, keys: dict[str, PrivateKey]) -> None:
    authority = keys[authority_alg]
    card = make_card(keys["p256"], authority)
    s = session(card)
    proof = s.rotate(NONCE)
    other = ALGS[authority_alg]() if authority_alg == "p384" else keys["p384"]
    with pytest.raises(AuthorisationRejectedError):
        s.commit(ack(other, proof))
    assert s.commit(ack(authority, proof)) == 2


# -- COMMIT: acknowledgement matrix ---------------------------------------------------------------
def test_commit_refuses_every_bad_acknowledgement(
    p256_card: Card, authority: ec.EllipticCurvePrivateKey
) -> None:
    s = session(p256_card)
    proof = s.rotate(NONCE)
    rogue = ec.generate_private_key(ec.SECP256R1())
    other_nonce = RotationProof(proof.epoch, proof.public_key_der, proof.signature, bytes(32))
    other_epoch = RotationProof(3, proof.public_key_der, proof.signature, NONCE)
    other_key = RotationProof(2, spki(rogue.public_key()), proof.signature, NONCE)
    good = ack(authority, proof)
    bad_acks = {
        "absent": b"",
        "garbage": b"\x30\x03\x02\x01\x01",
        "random bytes": bytes(70),
        "wrong signer": ack(rogue, proof),
        "another nonce": ack(authority, other_nonce),
        "another UID": ack(authority, proof, OTHER_UID),
        "another epoch": ack(authority, other_epoch),
        "another key": ack(authority, other_key),
        "proof echoed back": proof.signature,
        "purge authorisation": sign_rule(authority, purge_tbs(UID, 2)),
        "truncated": good[:-1],
    }
    before = snapshot(p256_card)
    for name, bad in bad_acks.items():
        with pytest.raises(AuthorisationRejectedError) as err:
            s.commit(bad)
        assert err.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED, name
        assert snapshot(p256_card) == before, name
    assert s.commit(good) == 2


def test_commit_without_pending_and_replayed_acknowledgements(
    p256_card: Card, authority: ec.EllipticCurvePrivateKey
) -> None:
    s = session(p256_card)
    before = snapshot(p256_card)
    with pytest.raises(NoPendingRotationError) as err:
        s.commit(b"\x30\x00")
    assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert snapshot(p256_card) == before
    first = s.rotate(NONCE)
    ack1 = ack(authority, first)
    s.commit(ack1)
    with pytest.raises(NoPendingRotationError):  # the same ack again: nothing pending
        s.commit(ack1)
    second = s.rotate(NONCE)  # same nonce on purpose: the key and epoch differ
    before = snapshot(p256_card)
    with pytest.raises(AuthorisationRejectedError):
        s.commit(ack1)  # replay of an old acknowledgement
    assert snapshot(p256_card) == before
    assert s.commit(ack(authority, second)) == 3


def test_second_rotate_replaces_the_pending_key(
    p256_card: Card, authority: ec.EllipticCurvePrivateKey
) -> None:
    s = session(p256_card)
    first = s.rotate(NONCE)
    second = s.rotate(bytes(16))
    assert second.epoch == first.epoch == 2
    assert second.public_key_der != first.public_key_der
    with pytest.raises(AuthorisationRejectedError):
        s.commit(ack(authority, first))
    s.commit(ack(authority, second))
    assert spki(active_public(p256_card)) == second.public_key_der


def test_abort_discards_the_pending_key(
    p256_card: Card, authority: ec.EllipticCurvePrivateKey
) -> None:
    s = session(p256_card)
    before = snapshot(p256_card)
    proof = s.rotate(NONCE)
    s.abort()
    assert snapshot(p256_card) == before  # back to exactly the state before ROTATE
    assert not p256_card.keys.has(PENDING_SLOT)
    assert not s.state().pending
    with pytest.raises(NoPendingRotationError):
        s.commit(ack(authority, proof))
    with pytest.raises(NoPendingRotationError):
        s.abort()


# -- ROTATE: nonce lengths ------------------------------------------------------------------------
@pytest.mark.parametrize("length", [0, 1, 15, 65, 200])
def test_rotate_nonce_length_refused(p256_card: Card, length: int) -> None:
    s = session(p256_card)
    before = snapshot(p256_card)
    with pytest.raises(ApduError) as err:
        s.rotate(bytes(length))
    assert err.value.sw == SW.WRONG_LENGTH
    assert snapshot(p256_card) == before


@pytest.mark.parametrize("length", [16, 64])
def test_rotate_nonce_bounds_accepted(
    p256_card: Card, authority: ec.EllipticCurvePrivateKey, length: int
) -> None:
    s = session(p256_card)
    proof = s.rotate(bytes([7]) * length)
    proof.verify(active_public(p256_card), UID)
    assert s.commit(ack(authority, proof)) == 2


# -- the 6985 matrix ------------------------------------------------------------------------------
ALL_COMMANDS: list[tuple[spec.Ins, int, bytes]] = [
    (spec.Ins.ROTATE, 0x0000, NONCE),
    (spec.Ins.COMMIT, 0x0000, bytes(70)),
    (spec.Ins.ABORT, 0x0000, b""),
    (spec.Ins.GET_STATE, 0x0000, b""),
    (spec.Ins.DECRYPT, 0x0001, bytes(100)),
    (spec.Ins.PURGE, 0x0001, bytes(70)),
]


@pytest.mark.parametrize(
    "setup",
    ["not personalised", "personalised, no identity key", "incomplete personalisation"],
)
def test_every_command_refused_until_ready(
    setup: str, keys: dict[str, PrivateKey], authority: ec.EllipticCurvePrivateKey
) -> None:
    if setup == "not personalised":
        card = make_card(keys["p256"], authority, personalised=False)
    elif setup == "personalised, no identity key":
        card = make_card(None, authority)
    else:
        card = make_card(keys["p256"], authority, personalised=False)
        with pytest.raises(ApduError) as err:  # DGI 0502 missing: end of personalisation refused
            personalise(card, perso_dgis(authority.public_key(), 1)[:1])
        assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
        assert card.app_life_cycle(spec.AID) != APP_PERSONALISED
    s = session(card)
    before = snapshot(card)
    for ins, p1p2, data in ALL_COMMANDS:
        assert raw_sw(s, ins, p1p2 >> 8, p1p2 & 0xFF, data) == SW.CONDITIONS_NOT_SATISFIED, ins
        assert snapshot(card) == before, ins
    with pytest.raises(RotationUnavailableError):
        s.state()
    with pytest.raises(RotationUnavailableError):
        s.rotate(NONCE)


def test_wrong_p1_p2_and_class(p256_card: Card) -> None:
    s = session(p256_card)
    s.rotate(NONCE)  # a pending rotation, so COMMIT/ABORT reach their P1/P2 check
    before = snapshot(p256_card)
    for ins, data in [
        (spec.Ins.ROTATE, NONCE),
        (spec.Ins.COMMIT, bytes(70)),
        (spec.Ins.ABORT, b""),
        (spec.Ins.GET_STATE, b""),
    ]:
        for p1, p2 in [(0x01, 0x00), (0x00, 0x01), (0xFF, 0xFF)]:
            assert raw_sw(s, ins, p1, p2, data) == SW.INCORRECT_P1P2, (ins, p1, p2)
    for ins in (spec.Ins.DECRYPT, spec.Ins.PURGE):
        assert raw_sw(s, ins, 0, 0, bytes(70)) == SW.INCORRECT_P1P2, ins
    assert raw_sw(s, spec.Ins.ABORT, data=b"\x00") == SW.WRONG_LENGTH
    assert raw_sw(s, spec.Ins.GET_STATE, data=b"\x00") == SW.WRONG_LENGTH
    assert s.protocol.send(CommandApdu(0x00, spec.Ins.GET_STATE, 0, 0, b"", 256)).sw == (
        SW.CLA_NOT_SUPPORTED
    )
    assert raw_sw(s, 0x4C) == SW.INS_NOT_SUPPORTED
    assert snapshot(p256_card) == before


# -- DECRYPT --------------------------------------------------------------------------------------
@pytest.mark.parametrize("alg", list(ALGS))
def test_decrypt_with_the_current_key_before_any_rotation(
    alg: str, keys: dict[str, PrivateKey], authority: ec.EllipticCurvePrivateKey
) -> None:
    """Fleet commands are encrypted to the CURRENT identity key (ECIES P-256/P-384, RSA hybrid):
    DECRYPT with P1P2 = the current epoch uses the active key, and reads nothing else."""
    key = keys[alg]
    card = make_card(key, authority)
    s = session(card)
    before = snapshot(card)
    assert s.decrypt(1, encrypt_for(key.public_key(), b"reboot at 03:00")) == b"reboot at 03:00"
    assert snapshot(card) == before
    other = keys["p384" if alg == "p256" else "p256"].public_key()
    with pytest.raises(DecryptionFailedError) as err:
        s.decrypt(1, encrypt_for(other, b"x"))  # another key or algorithm: 6A80, not 6A88
    assert err.value.sw == SW.WRONG_DATA
    with pytest.raises(UnknownEpochError) as unknown:
        s.decrypt(2, encrypt_for(key.public_key(), b"x"))  # no epoch 2 yet
    assert unknown.value.sw == SW.REFERENCED_DATA_NOT_FOUND
    # A pending (uncommitted) key is not the current one: its epoch stays unknown.
    pending = s.rotate(NONCE).public_key
    with pytest.raises(UnknownEpochError):
        s.decrypt(2, encrypt_for(pending, b"x"))
    assert s.decrypt(1, encrypt_for(key.public_key(), b"still 1")) == b"still 1"


def test_decrypt_failures_with_the_current_key(
    keys: dict[str, PrivateKey], authority: ec.EllipticCurvePrivateKey
) -> None:
    """The negative matrix is the same for the current key: one status word, 6A80, for all."""
    key = keys["p256"]
    card = make_card(key, authority)
    s = session(card)
    good = encrypt_for(key.public_key(), b"current")
    tampered = bytearray(good)
    tampered[-1] ^= 1
    before = snapshot(card)
    for blob in (
        b"\x01garbage",
        bytes(tampered),
        good[:-20],
        encrypt_for(keys["rsa2048"].public_key(), b"x"),
        encrypt_for(key.public_key(), b"x", b"aad"),
    ):
        with pytest.raises(DecryptionFailedError) as err:
            s.decrypt(1, blob)
        assert err.value.sw == SW.WRONG_DATA
    assert snapshot(card) == before
    assert s.decrypt(1, good) == b"current"


@pytest.fixture
def rotated_card(
    keys: dict[str, PrivateKey], authority: ec.EllipticCurvePrivateKey
) -> tuple[Card, RotationSession]:
    card = make_card(keys["p256"], authority)
    s = session(card)
    s.commit(ack(authority, s.rotate(NONCE)))
    return card, s


def test_decrypt_failures(
    rotated_card: tuple[Card, RotationSession], keys: dict[str, PrivateKey]
) -> None:
    card, s = rotated_card
    old = keys["p256"].public_key()
    good = encrypt_for(old, b"secret history")
    tampered = bytearray(good)
    tampered[-1] ^= 1
    cases: dict[str, bytes] = {
        "garbage": b"\x01garbage",
        "unknown suite": b"\x09" + good[1:],
        "tampered tag": bytes(tampered),
        "truncated": good[:-20],
        "another curve": encrypt_for(keys["p384"].public_key(), b"x"),
        "RSA blob to an EC key": encrypt_for(keys["rsa2048"].public_key(), b"x"),
        "with associated data": encrypt_for(old, b"x", b"aad"),
        "to another key": encrypt_for(ec.generate_private_key(ec.SECP256R1()).public_key(), b"x"),
    }
    before = snapshot(card)
    for name, blob in cases.items():
        with pytest.raises(DecryptionFailedError) as err:
            s.decrypt(1, blob)
        assert err.value.sw == SW.WRONG_DATA, name
        assert snapshot(card) == before, name
    with pytest.raises(UnknownEpochError):
        s.decrypt(7, good)
    assert raw_sw(s, spec.Ins.DECRYPT, 0, 1, b"") == SW.WRONG_LENGTH
    assert snapshot(card) == before
    assert s.decrypt(1, good) == b"secret history"
    with pytest.raises(ValueError):
        s.decrypt(0, good)


def test_decrypt_rsa_failures(
    keys: dict[str, PrivateKey], authority: ec.EllipticCurvePrivateKey
) -> None:
    old = keys["rsa2048"]
    card = make_card(old, authority)
    s = session(card)
    good = encrypt_for(old.public_key(), b"rsa history")
    s.commit(ack(authority, s.rotate(NONCE)))
    before = snapshot(card)
    short_wrap = good[:1] + (128).to_bytes(2, "big") + good[3:131] + good[259:]
    bad_wrap = bytearray(good)
    bad_wrap[10] ^= 0x55
    for blob in (short_wrap, bytes(bad_wrap), encrypt_for(keys["p256"].public_key(), b"x")):
        with pytest.raises(DecryptionFailedError):
            s.decrypt(1, blob)
        with pytest.raises(DecryptionFailedError):
            s.decrypt(2, blob)  # the current RSA key: the same single status word
    assert snapshot(card) == before
    assert s.decrypt(1, good) == b"rsa history"


# -- PURGE ----------------------------------------------------------------------------------------
def test_purge(
    rotated_card: tuple[Card, RotationSession],
    keys: dict[str, PrivateKey],
    authority: ec.EllipticCurvePrivateKey,
) -> None:
    card, s = rotated_card
    blob = encrypt_for(keys["p256"].public_key(), b"x")
    rogue = ec.generate_private_key(ec.SECP256R1())
    before = snapshot(card)
    for bad in (
        b"",
        sign_rule(rogue, purge_tbs(UID, 1)),
        sign_rule(authority, purge_tbs(OTHER_UID, 1)),
        sign_rule(authority, purge_tbs(UID, 2)),
    ):
        with pytest.raises(AuthorisationRejectedError):
            s.purge(1, bad)
        assert snapshot(card) == before
    with pytest.raises(UnknownEpochError):
        s.purge(2, sign_rule(authority, purge_tbs(UID, 2)))  # the active epoch is not retired
    good = sign_rule(authority, purge_tbs(UID, 1))
    assert good and purge_tbs(UID, 1) == b"iotid-purge-v1" + UID + b"\x00\x00\x00\x01"
    s.purge(1, good)
    assert s.state().retired_epochs == ()
    assert not card.keys.has("identity.retired.1")
    with pytest.raises(UnknownEpochError):
        s.decrypt(1, blob)
    with pytest.raises(UnknownEpochError):
        s.purge(1, good)  # replay: the key is already gone


# -- personalisation ------------------------------------------------------------------------------
def _perso_sw(card: Card, dgis: list[tuple[int, bytes]]) -> int:
    try:
        personalise(card, dgis)
    except ApduError as exc:
        return exc.sw
    return SW.OK


@pytest.mark.parametrize(
    ("name", "make_dgis", "sw"),
    [
        ("authority not SPKI", lambda a: [(0x0501, b"\x30\x00"), (0x0502, b"\x00\x01")], 0x6A80),
        (
            "authority on secp256k1",
            lambda a: [
                (0x0501, spki(ec.generate_private_key(ec.SECP256K1()).public_key())),
                (0x0502, b"\x00\x01"),
            ],
            0x6A80,
        ),
        (
            "authority RSA-1024",
            lambda a: [
                (
                    0x0501,
                    spki(
                        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505
                    ),
                ),
                (0x0502, b"\x00\x01"),
            ],
            0x6A80,
        ),
        ("retention 1 byte", lambda a: [(0x0501, spki(a)), (0x0502, b"\x01")], 0x6A80),
        ("retention 3 bytes", lambda a: [(0x0501, spki(a)), (0x0502, b"\x00\x00\x01")], 0x6A80),
        ("unknown DGI", lambda a: [(0x0501, spki(a)), (0x0503, b"\x00")], 0x6A88),
        ("authority missing", lambda a: [(0x0502, b"\x00\x01")], 0x6985),
    ],
)
def test_personalisation_errors(
    name: str,
    make_dgis: Callable[[PublicKey], list[tuple[int, bytes]]],
    sw: int,
    authority: ec.EllipticCurvePrivateKey,
) -> None:
    card = Card.create(None, uid=UID, applets=[RotationApplet])
    assert _perso_sw(card, make_dgis(authority.public_key())) == sw, name
    assert card.app_life_cycle(spec.AID) != APP_PERSONALISED
    app = card.applet(spec.AID)
    assert app is not None and app.load("authority") is None and app.load("retention") is None


def test_personalisation_is_final(p256_card: Card, authority: ec.EllipticCurvePrivateKey) -> None:
    rogue = ec.generate_private_key(ec.SECP256R1())
    before = snapshot(p256_card)
    assert _perso_sw(p256_card, perso_dgis(rogue.public_key(), 9)) == SW.CONDITIONS_NOT_SATISFIED
    after = snapshot(p256_card)
    assert {k: v for k, v in after.items() if not k.startswith("isd/")} == {
        k: v for k, v in before.items() if not k.startswith("isd/")
    }
    assert session(p256_card).state().retention == 2


def test_perso_dgis_layout(authority: ec.EllipticCurvePrivateKey) -> None:
    dgis = perso_dgis(authority.public_key(), 3)
    assert dgis == [(0x0501, spki(authority.public_key())), (0x0502, b"\x00\x03")]
    with pytest.raises(ValueError):
        perso_dgis(authority.public_key(), 0x10000)
    with pytest.raises(ValueError):
        perso_dgis(authority.public_key(), -1)


# -- secrecy --------------------------------------------------------------------------------------
def test_no_private_key_in_any_answer(p256_card: Card) -> None:
    s = session(p256_card)
    proof = s.rotate(NONCE)
    pending = p256_card.keys._private(PENDING_SLOT)  # the test looks inside the card
    active = p256_card.keys._private(ACTIVE_SLOT)
    assert isinstance(pending, ec.EllipticCurvePrivateKey)
    assert isinstance(active, ec.EllipticCurvePrivateKey)
    answers = (
        proof.public_key_der + proof.signature + s.protocol.transmit(0x80, spec.Ins.GET_STATE, 0, 0)
    )
    for key in (pending, active):
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        assert scalar not in answers
    assert "signature" not in repr(proof) and proof.signature.hex() not in repr(proof)

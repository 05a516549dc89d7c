"""Key rotation survives ``kill -9`` at every NVM write point of ROTATE and of COMMIT
(DESIGN.md sections 5 and 6.5: "a power cut at any step leaves exactly one active identity key").

Scope: a child process (``rotation_tearing_child.py``) sends ROTATE or COMMIT to a durable card
and kills itself with SIGKILL at write point N, for every N in turn. This process reopens the
card and checks: exactly one active identity key, which signs for the expected public key (the
old one if the command was not applied, the new one if it was); epoch, pending flag and retired
epochs match; the NVM is byte-identical to the state before the command when it was not applied.
Then it checks recovery: after a torn-but-applied COMMIT a second COMMIT with the same
acknowledgement answers 6985 and the retired key still decrypts; after a torn-not-applied COMMIT
the same acknowledgement commits; after a torn ROTATE a new rotation runs to its end.

The card is one rotation in (epoch 2, epoch 1 retired) with retention 1, so the torn COMMIT also
zeroises epoch 1: the retention step must be atomic with the promotion.

Not covered: other algorithms (the write points do not depend on the key type; P-256 keeps this
fast), random-instant kills (``test_nvm_tearing.py`` covers the NVM itself).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from rotation_tearing_child import NONCE

from iotid.crypto.ecies import ecies_encrypt
from iotid.host import SecurityDomainSession, SmartCardProtocol
from iotid.host.rotation import NoPendingRotationError, RotationProof, RotationSession, perso_dgis
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.rotation import RotationApplet
from iotid.se.identity import ACTIVE_SLOT, PENDING_SLOT, IdentityStore
from iotid.se.keystore import PublicKey
from iotid.spec import rotation as spec
from iotid.transport.loopback import LoopbackConnection
from support.tearing import TMP_NAME, check_child, commit_points, run_child, write_points

pytestmark = pytest.mark.slow

CHILD = Path(__file__).resolve().with_name("rotation_tearing_child.py")
UID = bytes.fromhex("11223344556677889900")
SECRET = b"encrypted to the epoch-2 key before the rotation"


@dataclass(frozen=True)
class World:
    """The prepared cards and what the parent knows about them."""

    rotate_base: Path  # epoch 2, epoch 1 retired, nothing pending
    commit_base: Path  # the same plus a pending epoch-3 key (ROTATE done)
    authority: ec.EllipticCurvePrivateKey
    epoch2_spki: bytes
    proof3: RotationProof  # the pending epoch-3 key of commit_base
    blob: bytes  # SECRET encrypted to the epoch-2 key


def _spki(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _ack(authority: ec.EllipticCurvePrivateKey, proof: RotationProof) -> bytes:
    return authority.sign(proof.ack_tbs(UID), ec.ECDSA(hashes.SHA256()))


def _session(card: Card) -> RotationSession:
    return RotationSession(SmartCardProtocol(LoopbackConnection(card)))


def _open(state: Path) -> Card:
    return Card.open(state, applets=[RotationApplet])


def _snapshot(state: Path) -> dict[str, bytes | None]:
    card = _open(state)
    names = card.nvm.keys("")
    return {k: card.nvm.get(k) for k in names}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("rotation")
    authority = ec.generate_private_key(ec.SECP256R1())
    rotate_base = root / "rotate"
    card = Card.create(rotate_base, uid=UID, applets=[RotationApplet])
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(spec.AID)
    sd.store_data(perso_dgis(authority.public_key(), 1))
    with card.nvm.transaction():
        IdentityStore(card.nvm, card.keys).provision(ec.generate_private_key(ec.SECP256R1()))
    s = _session(card)
    proof2 = s.rotate(bytes(16))
    assert s.commit(_ack(authority, proof2)) == 2
    epoch2 = proof2.public_key
    assert isinstance(epoch2, ec.EllipticCurvePublicKey)
    blob = ecies_encrypt(epoch2, SECRET)
    commit_base = root / "commit"
    shutil.copytree(rotate_base, commit_base)
    proof3 = _session(_open(commit_base)).rotate(NONCE)
    return World(rotate_base, commit_base, authority, proof2.public_key_der, proof3, blob)


def _labels(scratch: Path, *args: str) -> list[str]:
    return write_points(run_child(CHILD, scratch, 0, *args))[0]


def _check_one_active_key(card: Card, expected_spki: bytes) -> None:
    """Exactly one active identity key, and it signs for ``expected_spki``."""
    identity = IdentityStore(card.nvm, card.keys)
    assert identity.provisioned and card.keys.has(ACTIVE_SLOT)
    slots = [i.slot for i in card.keys.slots() if i.slot.startswith("identity.")]
    assert slots.count(ACTIVE_SLOT) == 1
    assert all(s in (ACTIVE_SLOT, PENDING_SLOT) or s.startswith("identity.retired.") for s in slots)
    assert _spki(identity.active_public_key()) == expected_spki
    signature = identity.sign(b"who are you", "sha256")
    public = serialization.load_der_public_key(expected_spki)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signature, b"who are you", ec.ECDSA(hashes.SHA256()))  # raises if not


def _kill_points(labels: list[str]) -> tuple[int, range]:
    """(the write point after which the command's commit is visible, every point to try)."""
    return max(commit_points(labels)), range(1, len(labels) + 2)  # + 1: never killed


def test_kill_at_every_write_point_of_rotate(world: World, tmp_path: Path) -> None:
    labels = _labels(shutil.copytree(world.rotate_base, tmp_path / "count"), "rotate")
    assert any(label.startswith("put key/identity.pending") for label in labels)
    commit, points = _kill_points(labels)
    before = _snapshot(world.rotate_base)
    torn = 0
    for kill_at in points:
        where = f"killed at point {kill_at} ({[*labels, 'never'][kill_at - 1]})"
        state = shutil.copytree(world.rotate_base, tmp_path / f"r{kill_at}")
        check_child(run_child(CHILD, state, kill_at, "rotate"), kill_at, len(labels))
        torn += (state / TMP_NAME).exists()
        card = _open(state)
        assert not (state / TMP_NAME).exists()
        _check_one_active_key(card, world.epoch2_spki)
        s = _session(card)
        st = s.state()
        assert (st.epoch, st.retired_epochs) == (2, (1,)), where
        assert st.pending is (kill_at >= commit), where
        assert card.keys.has(PENDING_SLOT) is (kill_at >= commit), where
        if kill_at < commit:
            assert _snapshot(state) == before, where
        # Recovery: the fleet asks again; the new rotation runs to its end.
        proof = s.rotate(NONCE)
        assert s.commit(_ack(world.authority, proof)) == 3, where
        _check_one_active_key(card, proof.public_key_der)
    assert torn > 0, "no kill left a half-written image: the test tore nothing"


def test_kill_at_every_write_point_of_commit(world: World, tmp_path: Path) -> None:
    ack = _ack(world.authority, world.proof3)
    labels = _labels(shutil.copytree(world.commit_base, tmp_path / "count"), "commit", ack.hex())
    # Promotion (moves), epoch, the pending record, retention (epoch 1 destroyed), then the image.
    assert any(label == "delete key/identity.retired.1" for label in labels), labels
    commit, points = _kill_points(labels)
    before = _snapshot(world.commit_base)
    torn = 0
    for kill_at in points:
        where = f"killed at point {kill_at} ({[*labels, 'never'][kill_at - 1]})"
        state = shutil.copytree(world.commit_base, tmp_path / f"c{kill_at}")
        check_child(run_child(CHILD, state, kill_at, "commit", ack.hex()), kill_at, len(labels))
        torn += (state / TMP_NAME).exists()
        card = _open(state)
        s = _session(card)
        if kill_at >= commit:  # applied: the new key, the old one retired, retention done
            _check_one_active_key(card, world.proof3.public_key_der)
            st = s.state()
            assert (st.epoch, st.pending, st.retired_epochs) == (3, False, (2,)), where
            with pytest.raises(NoPendingRotationError):
                s.commit(ack)
        else:  # not applied: the old key, the rotation still pending, NVM untouched
            _check_one_active_key(card, world.epoch2_spki)
            st = s.state()
            assert (st.epoch, st.pending, st.retired_epochs) == (2, True, (1,)), where
            assert _snapshot(state) == before, where
            assert s.commit(ack) == 3, where
            _check_one_active_key(card, world.proof3.public_key_der)
        # Either way the retired epoch-2 key still decrypts what was encrypted to it.
        assert s.decrypt(2, world.blob) == SECRET, where
        assert s.state().retired_epochs == (2,), where
    assert torn > 0, "no kill left a half-written image: the test tore nothing"

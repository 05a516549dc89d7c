"""PROVISION and the admin re-key survive ``kill -9`` at every NVM write point (DESIGN.md
section 5, "NVM"; section 6.1).

Scope: a child process (``provisioning_child.py``) runs PROVISION, or GET REKEY CHALLENGE +
REKEY, over the loopback transport on a durable card and kills itself with SIGKILL at write
point N, for every N in turn. This process reopens the state directory and checks:

- PROVISION: either not provisioned (no active key slot, epoch 0) and PROVISION then gives
  exactly the derived key, or provisioned with exactly the derived key (epoch 1) and PROVISION
  is then refused; which one is decided by whether the kill came after the commit's rename.
- REKEY: either the old identity key still active (generation 0) and PROVISION refused, or no
  identity key, generation and counter 1, and PROVISION then gives the generation-1 key.
In both, the *provisioned* flag and the active key slot are present together or not at all.

Not covered: random-instant kills and OS crashes (``test_nvm_tearing.py`` covers the NVM itself).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from provisioning_child import ALG, APPLETS, MASTER, OPERATOR, UID

from iotid.crypto.identity_kdf import derive_identity_key
from iotid.host import SecurityDomainSession
from iotid.host.protocol import SmartCardProtocol
from iotid.host.provisioning import (
    AlreadyProvisionedError,
    NotProvisionedError,
    ProvisioningSession,
    perso_dgis,
)
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.identity import ACTIVE_SLOT
from iotid.spec import provisioning as spec
from iotid.transport.loopback import LoopbackConnection
from support.tearing import TMP_NAME, check_child, commit_points, run_child, write_points

pytestmark = pytest.mark.slow

CHILD = Path(__file__).resolve().with_name("provisioning_child.py")


def _spki(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _derived(generation: int) -> bytes:
    return _spki(derive_identity_key(MASTER, UID, ALG, generation).public_key())


def _session(card: Card) -> ProvisioningSession:
    return ProvisioningSession(SmartCardProtocol(LoopbackConnection(card)))


@pytest.fixture(scope="module")
def personalised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A durable card whose provisioning applet is personalised, not provisioned."""
    state = tmp_path_factory.mktemp("personalised") / "card"
    card = Card.create(state, uid=UID, applets=APPLETS)
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(spec.AID)
    sd.store_data(perso_dgis(MASTER, ALG, OPERATOR.public_key()))
    return state


@pytest.fixture(scope="module")
def provisioned(personalised: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same card after PROVISION (generation 0)."""
    state = tmp_path_factory.mktemp("provisioned") / "card"
    shutil.copytree(personalised, state)
    _session(Card.open(state, applets=APPLETS)).provision()
    return state


def _write_points(pristine: Path, scratch: Path, mode: str) -> list[str]:
    shutil.copytree(pristine, scratch)
    return write_points(run_child(CHILD, scratch, 0, mode))[0]


def _kill(pristine: Path, dest: Path, kill_at: int, mode: str, count: int) -> Card:
    """Copy the pristine card, run the child killed at ``kill_at``, reopen the card."""
    shutil.copytree(pristine, dest)
    assert kill_at <= count  # so check_child expects the kill
    check_child(run_child(CHILD, dest, kill_at, mode), kill_at, count)
    card = Card.open(dest, applets=APPLETS)
    assert not (dest / TMP_NAME).exists(), "a torn temporary image must be removed on open"
    # The flag and the key slot go together.
    assert (card.nvm.get("id/provisioned") is not None) == card.keys.has(ACTIVE_SLOT)
    return card


def _check_persisted(state: Path, expected: bytes, epoch: int) -> None:
    """After another restart the card holds what the parent just saw, and still refuses."""
    s = _session(Card.open(state, applets=APPLETS))
    info = s.public_key()
    assert (_spki(info.public_key), info.epoch) == (expected, epoch)
    with pytest.raises(AlreadyProvisionedError):
        s.provision()


def test_kill_at_every_write_point_of_provision(personalised: Path, tmp_path: Path) -> None:
    labels = _write_points(personalised, tmp_path / "count", "provision")
    # key slot, epoch and flag, then the commit's image writes.
    assert {"put key/identity.active", "put id/epoch", "put id/provisioned"} <= set(labels)
    (commit,) = commit_points(labels)
    outcomes = set()
    for kill_at in range(1, len(labels) + 1):
        where = f"killed at point {kill_at} ({labels[kill_at - 1]})"
        state = tmp_path / f"n{kill_at}"
        s = _session(_kill(personalised, state, kill_at, "provision", len(labels)))
        st = s.state()
        if kill_at >= commit:
            outcomes.add("provisioned")
            assert st.provisioned and st.epoch == 1, where
            assert _spki(s.public_key().public_key) == _derived(0), where
            with pytest.raises(AlreadyProvisionedError):
                s.provision()
        else:
            outcomes.add("not provisioned")
            assert not st.provisioned and st.epoch == 0, where
            with pytest.raises(NotProvisionedError):
                s.public_key()
            assert _spki(s.provision()) == _derived(0), where
        _check_persisted(state, _derived(0), 1)
    assert outcomes == {"provisioned", "not provisioned"}


def test_kill_at_every_write_point_of_rekey(provisioned: Path, tmp_path: Path) -> None:
    labels = _write_points(provisioned, tmp_path / "count", "rekey")
    assert {"delete key/identity.active", "delete id/provisioned"} <= set(labels)
    challenge_commit, rekey_commit = commit_points(labels)
    outcomes = set()
    for kill_at in range(1, len(labels) + 1):
        where = f"killed at point {kill_at} ({labels[kill_at - 1]})"
        state = tmp_path / f"n{kill_at}"
        s = _session(_kill(provisioned, state, kill_at, "rekey", len(labels)))
        st = s.state()
        if kill_at >= rekey_commit:
            outcomes.add("re-keyed")
            assert not st.provisioned, where
            assert (st.generation, st.rekey_counter, st.challenge_pending) == (1, 1, False), where
            assert _spki(s.provision()) == _derived(1), where
            _check_persisted(state, _derived(1), 2)
        else:
            outcomes.add("old key")
            assert st.provisioned and (st.generation, st.rekey_counter) == (0, 0), where
            assert st.challenge_pending == (kill_at >= challenge_commit), where
            assert _spki(s.public_key().public_key) == _derived(0), where
            with pytest.raises(AlreadyProvisionedError):
                s.provision()
            _check_persisted(state, _derived(0), 1)
    assert outcomes == {"re-keyed", "old key"}

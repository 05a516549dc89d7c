"""The PKCS#11 key store against a real SoftHSM2 token created in a temporary directory.

Each test provisions its own token (``SOFTHSM2_CONF`` points into ``tmp_path``; the system token
directory is never touched) and unloads the module afterwards, so the next test's configuration
is read afresh. Skipped only when ``softhsm2-util`` is missing; CI installs Debian ``softhsm2``.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pkcs11 import Attribute, ObjectClass

from iotid.factory.hsmstore import Pkcs11KeyStore, provision_softhsm_token, unload_module
from iotid.factory.keystore import (
    KeyStoreError,
    LockedError,
    PublicKey,
    QuorumError,
    Tier,
    fingerprint,
)
from iotid.factory.shares import ShareSet
from iotid.factory.softstore import SoftwareKeyStore
from iotid.factory.stores import create_store, open_store
from iotid.spec.algorithms import KeyAlg

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("softhsm2-util") is None, reason="softhsm2-util missing"),
]

LABEL = "iotid-test"
INITIAL_PIN = "initial-user-pin"
MESSAGE = b"signed inside the token"


@dataclass
class Token:
    module: str
    directory: Path
    uri: str


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Token]:
    module, conf = provision_softhsm_token(tmp_path / "softhsm", LABEL, "so-pin-1234", INITIAL_PIN)
    unload_module(module)  # a module loaded by an earlier test still has that test's config
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    yield Token(module, tmp_path / "store", f"pkcs11:token={LABEL};module={module}")
    unload_module(module)


@pytest.fixture
def made(token: Token) -> tuple[Token, ShareSet, bytes]:
    """A 2-of-3 store on the token: root (quorum), batch CA (operational), a master secret."""
    store, shares = create_store(token.directory, 2, 3, hsm=token.uri, hsm_pin=INITIAL_PIN)
    store.generate("root", KeyAlg.EC_P384, tier=Tier.QUORUM)
    store.generate("batch/b1/ca", KeyAlg.EC_P256, tier=Tier.OPERATIONAL)
    store.generate_secret("batch/b1/master", 32)
    line_key = store.create_line_key()
    store.lock()
    return token, shares, line_key


def _verify(public: PublicKey, alg: KeyAlg, signature: bytes, *, pss: bool = False) -> None:
    if isinstance(public, ec.EllipticCurvePublicKey):
        digest = hashes.SHA384() if alg is KeyAlg.EC_P384 else hashes.SHA256()
        public.verify(signature, MESSAGE, ec.ECDSA(digest))
    elif pss:
        public.verify(
            signature, MESSAGE, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
        )
    else:
        public.verify(signature, MESSAGE, padding.PKCS1v15(), hashes.SHA256())


def _token_session(token: Token) -> pkcs11.Session:
    """A plain session: it sees private objects because the store logged this process in."""
    return pkcs11.lib(token.module).get_token(token_label=LABEL).open()


@pytest.mark.parametrize("alg", [KeyAlg.EC_P256, KeyAlg.EC_P384, KeyAlg.RSA_2048])
def test_keys_are_generated_in_the_token_and_never_leave(token: Token, alg: KeyAlg) -> None:
    store, _ = create_store(token.directory, 2, 3, hsm=token.uri, hsm_pin=INITIAL_PIN)
    assert store.backend == "pkcs11"
    public = store.generate("k", alg, tier=Tier.QUORUM)
    signer = store.signer("k")
    _verify(public, alg, signer.sign(MESSAGE))
    if alg.is_rsa:
        assert isinstance(public, rsa.RSAPublicKey)
        assert public.key_size == 2048
        _verify(public, alg, signer.sign(MESSAGE, pss=True), pss=True)
    assert fingerprint(signer.public_key()) == fingerprint(public) == store.keys()[0].fingerprint
    session = _token_session(token)
    private = session.get_key(ObjectClass.PRIVATE_KEY, label="k")
    assert private[Attribute.TOKEN] is True
    assert private[Attribute.SENSITIVE] is True
    assert private[Attribute.EXTRACTABLE] is False
    assert private[Attribute.NEVER_EXTRACTABLE] is True
    assert private[Attribute.LOCAL] is True  # generated on the token, not imported
    secret_part = Attribute.PRIVATE_EXPONENT if alg.is_rsa else Attribute.VALUE
    with pytest.raises(pkcs11.AttributeSensitive):
        private[secret_part]
    with pytest.raises(pkcs11.PKCS11Error):
        private[Attribute.EXTRACTABLE] = True
    # Nothing but the public key is on disk.
    record = json.loads((token.directory / "hsmkeys" / "k.json").read_text())
    assert set(record) == {"format", "name", "alg", "tier", "id", "fingerprint", "public_key"}
    session.close()


def test_the_pin_is_split_m_of_n(made: tuple[Token, ShareSet, bytes]) -> None:
    token, shares, _ = made
    # The ceremony replaced the token's PIN: the provisioning PIN no longer logs in.
    with pytest.raises(pkcs11.PinIncorrect):
        pkcs11.lib(token.module).get_token(token_label=LABEL).open(user_pin=INITIAL_PIN)
    for pair in itertools.combinations(shares.mnemonics, 2):
        store = open_store(token.directory)
        assert isinstance(store, Pkcs11KeyStore)
        store.unlock_quorum(pair)
        _verify(store.public_key("root"), KeyAlg.EC_P384, store.signer("root").sign(MESSAGE))
        assert len(store.secret("batch/b1/master")) == 32
        store.lock()


def test_m_minus_one_shares_do_not_log_in(made: tuple[Token, ShareSet, bytes]) -> None:
    token, shares, _ = made
    store = open_store(token.directory)
    with pytest.raises(LockedError, match="the root key needs 2 of 3 shares"):
        store.signer("root")
    for share in shares.mnemonics:
        with pytest.raises(QuorumError, match=r"^2 of 3 shares needed, 1 given$"):
            store.unlock_quorum([share])
    with pytest.raises(LockedError, match="2 of 3 shares"):
        store.signer("root")
    with pytest.raises(LockedError):
        store.generate("root2", KeyAlg.EC_P256, tier=Tier.QUORUM)
    # Not logged in: the token shows no private object to this process.
    assert list(_token_session(token).get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})) == []


def test_shares_of_another_ceremony_are_refused_before_the_token(
    made: tuple[Token, ShareSet, bytes], tmp_path: Path
) -> None:
    token, _, _ = made
    other = SoftwareKeyStore(tmp_path / "elsewhere").initialise(2, 3)
    store = open_store(token.directory)
    with pytest.raises(QuorumError, match="another ceremony"):
        store.unlock_quorum(other.mnemonics[:2])
    assert not store.unlocked(Tier.QUORUM)


def test_the_line_key_logs_in_for_the_operational_tier_only(
    made: tuple[Token, ShareSet, bytes],
) -> None:
    token, _, line_key = made
    store = open_store(token.directory)
    with pytest.raises(LockedError, match="line key or 2 of 3 shares"):
        store.signer("batch/b1/ca")
    store.unlock_operational(line_key)
    _verify(
        store.public_key("batch/b1/ca"), KeyAlg.EC_P256, store.signer("batch/b1/ca").sign(MESSAGE)
    )
    assert len(store.secret("batch/b1/master")) == 32
    public = store.generate("batch/b2/ca", KeyAlg.EC_P384, tier=Tier.OPERATIONAL)
    _verify(public, KeyAlg.EC_P384, store.signer("batch/b2/ca").sign(MESSAGE))
    with pytest.raises(LockedError, match="the root key needs 2 of 3 shares"):
        store.signer("root")
    with pytest.raises(LockedError):
        store.create_line_key()
    store.lock()
    with pytest.raises(LockedError, match="line key does not open"):
        open_store(token.directory).unlock_operational(bytes(32))


def test_an_index_moved_to_another_tier_is_caught_by_the_token(
    made: tuple[Token, ShareSet, bytes],
) -> None:
    token, _, line_key = made
    path = token.directory / "hsmkeys" / "root.json"
    record = json.loads(path.read_text())
    record["tier"] = "operational"
    path.write_text(json.dumps(record))
    store = open_store(token.directory)
    store.unlock_operational(line_key)
    with pytest.raises(KeyStoreError, match="does not match the token"):
        store.signer("root")


def test_the_hsm_uri_can_be_overridden_at_open(made: tuple[Token, ShareSet, bytes]) -> None:
    token, shares, _ = made
    store = open_store(token.directory, hsm_uri=f"pkcs11:token={LABEL}?module-path={token.module}")
    store.unlock_quorum(shares.mnemonics[:2])
    assert store.signer("root").alg is KeyAlg.EC_P384
    store.lock()
    wrong = open_store(token.directory, hsm_uri=f"pkcs11:token=absent;module={token.module}")
    with pytest.raises(KeyStoreError, match="no token labelled 'absent'"):
        wrong.unlock_quorum(shares.mnemonics[:2])


def test_a_wrong_initial_pin_creates_nothing_usable(token: Token) -> None:
    with pytest.raises(KeyStoreError, match="refused the initial user PIN"):
        create_store(token.directory, 2, 3, hsm=token.uri, hsm_pin="wrong-pin")
    assert not (token.directory / "keystore.json").exists()

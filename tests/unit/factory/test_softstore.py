"""The software key store (iotid.factory.softstore) and the backend factory (stores)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import stat
from pathlib import Path

import pytest
import shamir_mnemonic.shamir
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from iotid.factory.keystore import (
    KeyStoreError,
    LockedError,
    PublicKey,
    QuorumError,
    Tier,
    UnknownKeyError,
    fingerprint,
)
from iotid.factory.shares import ShareSet
from iotid.factory.softstore import SoftwareKeyStore
from iotid.factory.stores import create_store, open_store, parse_pkcs11_uri
from iotid.spec.algorithms import KeyAlg

MESSAGE = b"to be signed by the factory"


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


@pytest.fixture
def made(tmp_path: Path) -> tuple[Path, ShareSet, bytes]:
    """A 2-of-3 store with a quorum root key, an operational key and secret; and its line key."""
    store = SoftwareKeyStore(tmp_path / "store")
    shares = store.initialise(2, 3)
    store.generate("root", KeyAlg.EC_P384, tier=Tier.QUORUM)
    store.generate("batch/b1/ca", KeyAlg.EC_P256, tier=Tier.OPERATIONAL)
    store.generate_secret("batch/b1/master", 32)
    return tmp_path / "store", shares, store.create_line_key()


@pytest.mark.parametrize("alg", [KeyAlg.EC_P256, KeyAlg.EC_P384, KeyAlg.RSA_2048])
@pytest.mark.parametrize("tier", list(Tier))
def test_generate_sign_verify(tmp_path: Path, alg: KeyAlg, tier: Tier) -> None:
    store = SoftwareKeyStore(tmp_path)
    store.initialise(2, 3)
    public = store.generate("k", alg, tier=tier)
    assert fingerprint(store.public_key("k")) == fingerprint(public)
    signer = store.signer("k")
    assert signer.alg is alg
    assert fingerprint(signer.public_key()) == fingerprint(public)
    _verify(public, alg, signer.sign(MESSAGE), pss=False)
    if alg.is_rsa:
        _verify(public, alg, signer.sign(MESSAGE, pss=True), pss=True)
    else:
        with pytest.raises(ValueError, match="PSS"):
            signer.sign(MESSAGE, pss=True)
    (info,) = store.keys()
    assert (info.name, info.alg, info.tier, info.secret) == ("k", alg, tier, False)
    assert info.fingerprint == fingerprint(public)


def test_rsa_3072_pkcs1_and_pss(tmp_path: Path) -> None:
    store = SoftwareKeyStore(tmp_path)
    store.initialise(2, 2)
    public = store.generate("fw", KeyAlg.RSA_3072, tier=Tier.QUORUM)
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 3072
    signer = store.signer("fw")
    _verify(public, KeyAlg.RSA_3072, signer.sign(MESSAGE))
    _verify(public, KeyAlg.RSA_3072, signer.sign(MESSAGE, pss=True), pss=True)


def test_the_quorum_tier_is_locked_without_shares(made: tuple[Path, ShareSet, bytes]) -> None:
    directory, _, _ = made
    store = SoftwareKeyStore(directory)
    with pytest.raises(LockedError, match=r"^the root key needs 2 of 3 shares"):
        store.signer("root")
    with pytest.raises(LockedError, match="2 of 3 shares"):
        store.generate("root2", KeyAlg.EC_P256, tier=Tier.QUORUM)
    with pytest.raises(LockedError, match="line key"):
        store.create_line_key()
    with pytest.raises(LockedError, match="line key or 2 of 3 shares"):
        store.secret("batch/b1/master")
    # Public parts need no unlocking.
    assert isinstance(store.public_key("root"), ec.EllipticCurvePublicKey)
    infos = store.keys()
    assert [k.name for k in infos] == ["batch/b1/ca", "batch/b1/master", "root"]


def test_every_quorum_unlocks_everything(made: tuple[Path, ShareSet, bytes]) -> None:
    directory, shares, line_key = made
    for pair in itertools.combinations(shares.mnemonics, 2):
        store = SoftwareKeyStore(directory)
        store.unlock_quorum(pair)
        _verify(store.public_key("root"), KeyAlg.EC_P384, store.signer("root").sign(MESSAGE))
        _verify(
            store.public_key("batch/b1/ca"),
            KeyAlg.EC_P256,
            store.signer("batch/b1/ca").sign(MESSAGE),
        )
        assert len(store.secret("batch/b1/master")) == 32
        assert store.create_line_key() == line_key


def test_m_minus_one_shares_are_refused(made: tuple[Path, ShareSet, bytes]) -> None:
    directory, shares, _ = made
    store = SoftwareKeyStore(directory)
    for share in shares.mnemonics:
        with pytest.raises(QuorumError, match=r"^2 of 3 shares needed, 1 given$"):
            store.unlock_quorum([share])
    assert not store.unlocked(Tier.QUORUM)
    assert not store.unlocked(Tier.OPERATIONAL)
    with pytest.raises(LockedError):
        store.signer("root")


def test_shares_of_another_ceremony_are_refused(
    made: tuple[Path, ShareSet, bytes], tmp_path: Path
) -> None:
    directory, shares, _ = made
    other = SoftwareKeyStore(tmp_path / "other").initialise(2, 3)
    store = SoftwareKeyStore(directory)
    with pytest.raises(QuorumError, match="belongs to another ceremony"):
        store.unlock_quorum(other.mnemonics[:2])
    with pytest.raises(QuorumError, match="share 2 belongs to another ceremony"):
        store.unlock_quorum([shares.mnemonics[0], other.mnemonics[1]])
    assert not store.unlocked(Tier.QUORUM)


def test_shares_that_combine_but_are_not_this_stores_fail_aes_gcm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shamir_mnemonic.shamir, "_random_identifier", lambda: 0x0777)
    first = SoftwareKeyStore(tmp_path / "a")
    first.initialise(2, 3)
    first.generate("root", KeyAlg.EC_P256, tier=Tier.QUORUM)
    impostor = SoftwareKeyStore(tmp_path / "b").initialise(2, 3)
    store = SoftwareKeyStore(tmp_path / "a")
    with pytest.raises(QuorumError, match="do not open this key store"):
        store.unlock_quorum(impostor.mnemonics[:2])
    with pytest.raises(QuorumError, match="do not open this key store"):
        store.unlock_quorum_kek(os.urandom(32))
    assert not store.unlocked(Tier.QUORUM)
    with pytest.raises(LockedError):
        store.signer("root")


def test_the_line_key_unlocks_the_operational_tier_only(
    made: tuple[Path, ShareSet, bytes],
) -> None:
    directory, shares, line_key = made
    store = SoftwareKeyStore(directory)
    store.unlock_operational(line_key)
    assert store.unlocked(Tier.OPERATIONAL)
    assert not store.unlocked(Tier.QUORUM)
    _verify(
        store.public_key("batch/b1/ca"), KeyAlg.EC_P256, store.signer("batch/b1/ca").sign(MESSAGE)
    )
    store.generate("batch/b2/ca", KeyAlg.EC_P256, tier=Tier.OPERATIONAL)
    with pytest.raises(LockedError, match="the root key needs 2 of 3 shares"):
        store.signer("root")
    with pytest.raises(LockedError):
        store.create_line_key()
    quorum = SoftwareKeyStore(directory)
    quorum.unlock_quorum(shares.mnemonics[:2])
    assert store.secret("batch/b1/master") == quorum.secret("batch/b1/master")
    store.signer("batch/b2/ca")  # generated under the line key, usable by the quorum
    quorum.signer("batch/b2/ca")


def test_the_line_key_file_form_is_accepted(made: tuple[Path, ShareSet, bytes]) -> None:
    directory, _, line_key = made
    store = SoftwareKeyStore(directory)
    store.unlock_operational(line_key.hex().encode() + b"\n")
    assert store.unlocked(Tier.OPERATIONAL)


@pytest.mark.parametrize(
    "bad",
    [bytes(range(32)), b"", b"short", bytes(range(32)).hex().encode()],
    ids=["raw", "empty", "short", "hex"],
)
def test_a_wrong_line_key_is_refused(made: tuple[Path, ShareSet, bytes], bad: bytes) -> None:
    directory, _, _ = made
    store = SoftwareKeyStore(directory)
    with pytest.raises(LockedError, match="line key does not open"):
        store.unlock_operational(bad)
    assert not store.unlocked(Tier.OPERATIONAL)


def _edit(path: Path, **changes: object) -> None:
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


def test_a_tampered_ciphertext_is_an_error(made: tuple[Path, ShareSet, bytes]) -> None:
    directory, shares, _ = made
    path = directory / "keys" / "root.json"
    ciphertext = bytearray(base64.b64decode(json.loads(path.read_text())["ciphertext"]))
    ciphertext[10] ^= 0x01
    _edit(path, ciphertext=base64.b64encode(bytes(ciphertext)).decode())
    store = SoftwareKeyStore(directory)
    store.unlock_quorum(shares.mnemonics[:2])
    with pytest.raises(KeyStoreError, match="failed authentication"):
        store.signer("root")


def test_moving_the_root_key_to_the_operational_tier_is_detected(
    made: tuple[Path, ShareSet, bytes],
) -> None:
    directory, _, line_key = made
    _edit(directory / "keys" / "root.json", tier="operational")
    store = SoftwareKeyStore(directory)
    store.unlock_operational(line_key)
    with pytest.raises(KeyStoreError, match="failed authentication"):
        store.signer("root")


def test_a_swapped_public_key_is_detected(made: tuple[Path, ShareSet, bytes]) -> None:
    directory, shares, _ = made
    path = directory / "keys" / "root.json"
    rogue = ec.generate_private_key(ec.SECP384R1()).public_key()
    spki = rogue.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _edit(path, public_key=base64.b64encode(spki).decode())
    store = SoftwareKeyStore(directory)
    with pytest.raises(KeyStoreError, match="does not match its fingerprint"):
        store.public_key("root")
    _edit(path, fingerprint=fingerprint(rogue))  # consistent forgery: caught by the AAD
    store.unlock_quorum(shares.mnemonics[1:])
    with pytest.raises(KeyStoreError, match="failed authentication"):
        store.signer("root")


def test_a_key_file_copied_under_another_name_is_detected(
    made: tuple[Path, ShareSet, bytes],
) -> None:
    directory, shares, _ = made
    keys = directory / "keys"
    record = json.loads((keys / "batch" / "b1" / "ca.json").read_text())
    record["name"] = "batch/b9/ca"
    (keys / "batch" / "b9").mkdir(parents=True)
    (keys / "batch" / "b9" / "ca.json").write_text(json.dumps(record))
    store = SoftwareKeyStore(directory)
    store.unlock_quorum(shares.mnemonics[:2])
    with pytest.raises(KeyStoreError, match="failed authentication"):
        store.signer("batch/b9/ca")


def test_tampered_store_metadata_is_detected(made: tuple[Path, ShareSet, bytes]) -> None:
    directory, shares, _ = made
    _edit(directory / "softstore.json", count=2)
    store = SoftwareKeyStore(directory)
    with pytest.raises(QuorumError, match="do not open this key store"):
        store.unlock_quorum(shares.mnemonics[:2])


def test_a_corrupt_key_file_is_an_error(made: tuple[Path, ShareSet, bytes]) -> None:
    directory, _, _ = made
    (directory / "keys" / "root.json").write_text("{not json")
    with pytest.raises(KeyStoreError, match="unreadable"):
        SoftwareKeyStore(directory).public_key("root")


def test_no_key_material_in_any_repr_or_file(made: tuple[Path, ShareSet, bytes]) -> None:
    directory, shares, line_key = made
    store = SoftwareKeyStore(directory)
    store.unlock_quorum(shares.mnemonics[:2])
    secret = store.secret("batch/b1/master")
    signer = store.signer("root")
    private = serialization.load_der_private_key(_private_der(store, "root"), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    scalar = private.private_numbers().private_value
    forbidden = [
        secret.hex(),
        base64.b64encode(secret).decode(),
        line_key.hex(),
        base64.b64encode(line_key).decode(),
        f"{scalar:x}",
        str(scalar),
        *shares.mnemonics,
    ]
    texts = [repr(store), str(store), repr(signer), str(signer), repr(shares), str(shares)]
    infos = store.keys()
    texts += [repr(info) for info in infos]
    texts += [p.read_text() for p in directory.rglob("*.json")]
    for text in texts:
        for value in forbidden:
            assert value not in text
    for path in directory.rglob("*.json"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def _private_der(store: SoftwareKeyStore, name: str) -> bytes:
    signer = store.signer(name)
    key = signer._key  # the test reads what only the backend holds
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_names_kinds_and_duplicates(made: tuple[Path, ShareSet, bytes]) -> None:
    directory, shares, _ = made
    store = SoftwareKeyStore(directory)
    store.unlock_quorum(shares.mnemonics[:2])
    with pytest.raises(KeyStoreError, match="already exists"):
        store.generate("root", KeyAlg.EC_P256, tier=Tier.QUORUM)
    with pytest.raises(KeyStoreError, match="already exists"):
        store.generate_secret("batch/b1/master")
    for bad in ("../escape", ".hidden", "a//b", "a/", "", "a b", "x" * 201):
        with pytest.raises(ValueError, match="invalid key name"):
            store.generate(bad, KeyAlg.EC_P256, tier=Tier.OPERATIONAL)
    with pytest.raises(UnknownKeyError):
        store.signer("nope")
    with pytest.raises(KeyStoreError, match="is a secret"):
        store.signer("batch/b1/master")
    with pytest.raises(KeyStoreError, match="is a key pair"):
        store.secret("root")
    with pytest.raises(ValueError, match="not a key-pair algorithm"):
        store.generate("aes", KeyAlg.AES_128, tier=Tier.OPERATIONAL)
    with pytest.raises(ValueError, match="16, 24 or 32"):
        store.generate_secret("odd", 20)
    store.generate_secret("k16", 16, tier=Tier.QUORUM)
    infos = store.keys()
    info = {k.name: k for k in infos}["k16"]
    assert (info.alg, info.tier, info.secret) == (KeyAlg.AES_128, Tier.QUORUM, True)
    assert len(store.secret("k16")) == 16


def test_no_store_in_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="no software key store"):
        SoftwareKeyStore(tmp_path).unlock_quorum(["x"])


# --- stores: the backend comes from configuration -------------------------------------------


def test_create_and_open_a_software_store(tmp_path: Path) -> None:
    store, shares = create_store(tmp_path, 2, 3)
    assert store.backend == "software"
    assert json.loads((tmp_path / "keystore.json").read_text())["backend"] == "software"
    store.generate("root", KeyAlg.EC_P256, tier=Tier.QUORUM)
    reopened = open_store(tmp_path)
    assert isinstance(reopened, SoftwareKeyStore)
    assert not reopened.unlocked(Tier.QUORUM)
    reopened.unlock_quorum(shares.mnemonics[1:])
    _verify(reopened.public_key("root"), KeyAlg.EC_P256, reopened.signer("root").sign(MESSAGE))
    with pytest.raises(KeyStoreError, match="already exists"):
        create_store(tmp_path, 2, 3)
    with pytest.raises(KeyStoreError, match="software store, not an HSM"):
        open_store(tmp_path, hsm_uri="pkcs11:token=t;module=/x.so")


def test_open_store_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match=r"keystore\.json missing"):
        open_store(tmp_path)
    (tmp_path / "keystore.json").write_text('{"backend": "floppy"}')
    with pytest.raises(KeyStoreError, match="unknown backend"):
        open_store(tmp_path)
    (tmp_path / "keystore.json").write_text('{"backend": "pkcs11"}')
    with pytest.raises(KeyStoreError, match="lacks the PKCS#11 module or token"):
        open_store(tmp_path)


def test_create_store_needs_the_hsm_pin(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="current user PIN"):
        create_store(tmp_path, 2, 3, hsm="pkcs11:token=t;module=/x.so")
    with pytest.raises(ValueError, match="without an HSM"):
        create_store(tmp_path, 2, 3, hsm_pin="1234")
    assert not (tmp_path / "keystore.json").exists()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("pkcs11:token=root;module=/usr/lib/x.so", ("/usr/lib/x.so", "root")),
        ("pkcs11:module=/usr/lib/x.so;token=root", ("/usr/lib/x.so", "root")),
        (
            "pkcs11:token=iotid%20root?module-path=/opt/h%20sm/p11.so",
            ("/opt/h sm/p11.so", "iotid root"),
        ),
        ("PKCS11:token=a;module=/m.so;", ("/m.so", "a")),
    ],
)
def test_parse_pkcs11_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_pkcs11_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("/usr/lib/x.so", "not a PKCS#11 URI"),
        ("pkcs11:token=a", "needs both"),
        ("pkcs11:module=/m.so", "needs both"),
        ("pkcs11:token=a;module=/m.so;pin-value=1234", "PIN does not belong"),
        ("pkcs11:token=a;module=/m.so;slot-id=1", "unsupported"),
        ("pkcs11:token=a;token=b;module=/m.so", "given twice"),
        ("pkcs11:token;module=/m.so", "malformed"),
    ],
)
def test_parse_pkcs11_uri_refuses(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pkcs11_uri(uri)

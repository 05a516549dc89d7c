"""CSRs made inside the card, checked by OpenSSL; certificate chains issued to them, stored and
invalidated by a key rotation (DESIGN.md sections 6.3 and 10: independent peers).

Scope: for P-256, P-384, RSA-2048 and RSA-3072 identity keys, ``openssl req -verify`` (a
subprocess) and ``cryptography`` accept the card's PKCS#10 request, whose subject, SAN and hash
are as specified; a chain issued by a test CA to the CSR's key installs, reads back identical and
passes ``openssl verify``; a chain for another key is refused (6A80) and nothing is stored; after a
rotation (``IdentityStore.generate_pending`` + ``commit_pending``) the stored chain is gone (6A88)
and the old one is refused for the new key.

Not covered: the negative matrix and signatures per scheme (``tests/unit/se/test_mtls_applet.py``),
TLS handshakes (the tlslite-ng adapter's tests).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from iotid.host.mtls import ChainRejectedError, MtlsSession, NoCredentialError
from iotid.host.protocol import SmartCardProtocol
from iotid.se import Card
from iotid.se.identity import IdentityStore
from iotid.spec.algorithms import KeyAlg
from iotid.spec.iso7816 import SW
from iotid.transport.loopback import LoopbackConnection
from support.pki import ca, new_key, write_pem
from support.tls import mtls_card

UID = bytes.fromhex("A1B2C3D4E5F601020304")
OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


def ready_card(alg: KeyAlg) -> tuple[Card, MtlsSession]:
    return mtls_card(new_key(alg), uid=UID, alg=alg)


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], capture_output=True, text=True, check=False)


def req_verified(path: Path, *extra: str) -> bool:
    """``openssl req -verify``. OpenSSL 3.0 exits 0 even when the self-signature fails (it
    prints "verify failure"), so the verdict is the exit status AND the printed result."""
    result = openssl("req", "-verify", "-in", str(path), "-noout", *extra)
    said = result.stdout + result.stderr
    return result.returncode == 0 and "verify OK" in said and "failure" not in said


class TestCa:
    """A root and an intermediate CA (P-384 root, P-256 intermediate)."""

    __test__ = False

    def __init__(self) -> None:
        root = ca("iotid test root", new_key(KeyAlg.EC_P384))
        self._mid = root.sub("iotid test issuing CA")
        self.root, self.mid = root.cert, self._mid.cert

    def issue(self, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        """A client certificate for the CSR's key, subject and SAN (as the fleet would)."""
        assert csr.is_signature_valid
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        public = csr.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        return self._mid.client(csr.subject, public, san=list(san))


ALL_ALGS = [KeyAlg.EC_P256, KeyAlg.EC_P384, KeyAlg.RSA_2048, KeyAlg.RSA_3072]


@pytest.mark.parametrize("alg", ALL_ALGS, ids=lambda a: a.name)
def test_openssl_accepts_the_csr_made_inside_the_card(alg: KeyAlg, tmp_path: Path) -> None:
    _card, se = ready_card(alg)
    csr = se.create_csr()
    assert csr.is_signature_valid
    assert csr.public_key() == se.public_key()
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == UID.hex()
    assert csr.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == UID.hex()
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:iotid:uid:{UID.hex()}"]
    expected_hash = "sha384" if alg is KeyAlg.EC_P384 else "sha256"
    assert csr.signature_hash_algorithm is not None
    assert csr.signature_hash_algorithm.name == expected_hash

    pem = write_pem(tmp_path / "csr.pem", csr)
    assert req_verified(pem)
    text = openssl("req", "-in", str(pem), "-noout", "-text").stdout
    assert f"URI:urn:iotid:uid:{UID.hex()}" in text
    assert expected_hash.upper() in text.upper()  # ecdsa-with-SHA384, sha256WithRSAEncryption


def test_openssl_refuses_a_tampered_csr(tmp_path: Path) -> None:
    """The check above is meaningful: one flipped signature bit and OpenSSL says no."""
    _card, se = ready_card(KeyAlg.EC_P256)
    der = bytearray(se.create_csr().public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the ECDSA signature's s integer
    path = tmp_path / "bad.der"
    path.write_bytes(bytes(der))
    assert not req_verified(path, "-inform", "DER")
    said = openssl("req", "-verify", "-inform", "DER", "-in", str(path), "-noout")
    assert "verify failure" in said.stdout + said.stderr
    # ...and the untampered bytes pass the same DER path.
    der[-3] ^= 0x01
    path.write_bytes(bytes(der))
    assert req_verified(path, "-inform", "DER")


def test_csr_with_a_given_common_name(tmp_path: Path) -> None:
    _card, se = ready_card(KeyAlg.EC_P384)
    csr = se.create_csr("capteur-Été-7")
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "capteur-Été-7"
    assert csr.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == UID.hex()
    assert req_verified(write_pem(tmp_path / "c.pem", csr))


@pytest.mark.parametrize("alg", [KeyAlg.EC_P256, KeyAlg.RSA_2048], ids=lambda a: a.name)
def test_chain_issued_to_the_csr_installs_and_reads_back(alg: KeyAlg, tmp_path: Path) -> None:
    _card, se = ready_card(alg)
    ca = TestCa()
    leaf = ca.issue(se.create_csr())
    se.install_chain([leaf, ca.mid, ca.root])
    back = se.chain()
    assert back == [leaf, ca.mid, ca.root]
    assert [c.public_bytes(serialization.Encoding.DER) for c in back] == [
        c.public_bytes(serialization.Encoding.DER) for c in (leaf, ca.mid, ca.root)
    ]
    result = openssl(
        "verify",
        "-CAfile",
        str(write_pem(tmp_path / "root.pem", back[2])),
        "-untrusted",
        str(write_pem(tmp_path / "mid.pem", back[1])),
        "-purpose",
        "sslclient",
        str(write_pem(tmp_path / "leaf.pem", back[0])),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # A fresh session (another host process) sees the same chain.
    assert MtlsSession(SmartCardProtocol(LoopbackConnection(_card))).chain() == back


def test_chain_for_another_key_is_refused_and_nothing_is_stored() -> None:
    card, se = ready_card(KeyAlg.EC_P256)
    ca = TestCa()
    _other_card, other = ready_card(KeyAlg.EC_P256)
    foreign = ca.issue(other.create_csr())
    before = {k: card.nvm.get(k) for k in card.nvm.keys("")}
    with pytest.raises(ChainRejectedError) as err:
        se.install_chain([foreign, ca.mid, ca.root])
    assert err.value.sw == SW.WRONG_DATA
    assert {k: card.nvm.get(k) for k in card.nvm.keys("")} == before
    with pytest.raises(NoCredentialError):
        se.chain()


@pytest.mark.parametrize("alg", [KeyAlg.EC_P384, KeyAlg.RSA_2048], ids=lambda a: a.name)
def test_rotation_invalidates_the_stored_chain(alg: KeyAlg) -> None:
    card, se = ready_card(alg)
    ca = TestCa()
    old_leaf = ca.issue(se.create_csr())
    se.install_chain([old_leaf, ca.mid])
    assert se.identity().epoch == 1

    with card.nvm.transaction():  # what the rotation applet does on ROTATE then COMMIT
        ids = IdentityStore(card.nvm, card.keys)
        ids.generate_pending(alg)
        ids.commit_pending()

    with pytest.raises(NoCredentialError) as err:
        se.chain()
    assert err.value.sw == SW.REFERENCED_DATA_NOT_FOUND
    identity = se.identity()
    assert identity.epoch == 2
    assert identity.public_key != old_leaf.public_key()
    with pytest.raises(ChainRejectedError):  # the old certificate does not certify the new key
        se.install_chain([old_leaf, ca.mid])
    new_leaf = ca.issue(se.create_csr())
    assert new_leaf.public_key() == identity.public_key
    se.install_chain([new_leaf, ca.mid])
    assert se.chain() == [new_leaf, ca.mid]

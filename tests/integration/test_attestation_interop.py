"""Attestation quotes checked by peers nobody here wrote: pycose verifies the COSE_Sign1 and
``cryptography.x509.verification`` walks the x5chain to the root of a test PKI.

The PKI is built here with ``CertificateBuilder``: root CA -> batch attestation CA -> the
attestation certificate for the key the card generated, in three families: ES256 (P-256 chain and
attestation key), ES384 (P-384) and PS256 (RSA-2048). The card is personalised over SCP03 through
the ISD in the two phases the factory uses (generate, read the public key, certify, store the
chain); the identity key is put in with ``IdentityStore.provision`` (the provisioning applet is
tested on its own).

The chain walk: ``build_client_verifier()`` with the default policy refuses our attestation
certificate because the Web PKI client profile demands a subjectAltName and the clientAuth EKU,
which mean nothing for an attestation key. So the CA certificates keep the Web PKI CA defaults
(``ExtensionPolicy.webpki_defaults_ca()``) and the end-entity policy is ours: keyUsage present with
digitalSignature, basicConstraints (if present) not a CA, anything else permitted. Path building,
signatures, validity dates, name chaining and the CAs' basic constraints are cryptography's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from cwt import COSE, COSEKey
from pycose.headers import Algorithm, X5chain
from pycose.keys import CoseKey
from pycose.messages import Sign1Message

from iotid.host import SecurityDomainSession, SmartCardProtocol
from iotid.host.attestation import (
    AttestationSession,
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
from iotid.spec.identity import SHARED_FIRMWARE_FLOOR_RECORD
from iotid.transport.loopback import LoopbackConnection
from support.pki import Ca, PrivateKey, PublicKey, ca, new_key

UID = bytes.fromhex("0A0B0C0D0E0F10111213")
NOW = dt.datetime.now(dt.UTC)


# -- the test PKI ------------------------------------------------------------------------------
@dataclass
class Pki:
    """root CA -> batch attestation CA; :meth:`certify` makes attestation certificates."""

    alg: KeyAlg
    root_ca: Ca
    batch_ca: Ca

    @classmethod
    def create(cls, alg: KeyAlg) -> Pki:
        root = ca("iotid test root", new_key(alg), path_length=1, days=365)
        return cls(alg, root, root.sub("iotid batch 42", new_key(alg), path_length=0, days=365))

    @property
    def root(self) -> x509.Certificate:
        return self.root_ca.cert

    @property
    def batch(self) -> x509.Certificate:
        return self.batch_ca.cert

    def certify(self, public: PublicKey, uid: bytes) -> x509.Certificate:
        return self.batch_ca.issue(f"iotid attestation {uid.hex()}", public, days=30)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def spki(key: Any) -> bytes:
    return key.public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _require_key_usage(policy: Any, cert: x509.Certificate, ku: x509.KeyUsage) -> None:
    if not ku.digital_signature:
        raise ValueError("the attestation key must be allowed to sign")


def _forbid_ca(policy: Any, cert: x509.Certificate, bc: x509.BasicConstraints | None) -> None:
    if bc is not None and bc.ca:
        raise ValueError("an attestation certificate is not a CA")


def walk_chain(leaf: x509.Certificate, rest: list[x509.Certificate], root: x509.Certificate,
               at: dt.datetime = NOW) -> list[x509.Certificate]:  # fmt: skip
    ee_policy = (
        ExtensionPolicy.permit_all()
        .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _require_key_usage)
        .may_be_present(x509.BasicConstraints, Criticality.AGNOSTIC, _forbid_ca)
    )
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(at)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee_policy)
        .build_client_verifier()
    )
    return list(verifier.verify(leaf, rest).chain)


# -- pycose ------------------------------------------------------------------------------------
def pycose_decode(data: bytes) -> Sign1Message:
    """pycose's own ``Sign1Message.decode``, unmodified. (pycose 1.1 cannot decode tagged messages
    under cbor2 >= 6, TimothyClaeys/pycose#141; the project pins cbor2 < 6, which python-cwt
    requires as well.)"""
    return Sign1Message.decode(data)


def pycose_verify(quote: bytes) -> tuple[bool, Sign1Message, list[x509.Certificate]]:
    """pycose decodes; the key comes from the leaf of the x5chain *pycose* read."""
    msg = pycose_decode(quote)
    chain = [x509.load_der_x509_certificate(c) for c in msg.phdr[X5chain]]
    pem = (
        chain[0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    msg.key = CoseKey.from_pem_public_key(pem.decode())
    return msg.verify_signature(), msg, chain


# -- the device --------------------------------------------------------------------------------
@dataclass
class Device:
    card: Card
    pki: Pki
    attestation_cert: x509.Certificate
    identity: PrivateKey

    def session(self, *, extended: bool = False) -> AttestationSession:
        return AttestationSession(
            SmartCardProtocol(LoopbackConnection(self.card), extended=extended)
        )


def _isd(card: Card) -> SecurityDomainSession:
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(spec.AID)
    return sd


def make_device(alg: KeyAlg, identity_alg: KeyAlg) -> Device:
    pki = Pki.create(alg)
    card = Card.create(None, uid=UID, applets=[AttestationApplet])
    # Phase 1: the card generates the attestation key; the factory reads the public key.
    _isd(card).store_data(perso_dgis_generate(alg), last=False)
    public = AttestationSession(
        SmartCardProtocol(LoopbackConnection(card))
    ).attestation_public_key()
    cert = pki.certify(public, UID)
    # Phase 2: the certificate chain (each certificate spans several STORE DATA blocks).
    _isd(card).store_data(perso_dgis_certificates(der(cert), der(pki.batch)))
    identity = new_key(identity_alg)
    with card.nvm.transaction():
        IdentityStore(card.nvm, card.keys).provision(identity)
        card.nvm.put(SHARED_FIRMWARE_FLOOR_RECORD, (7).to_bytes(4, "big"))
    return Device(card, pki, cert, identity)


FAMILIES = [
    pytest.param((KeyAlg.EC_P256, KeyAlg.EC_P256, -7), id="ES256"),
    pytest.param((KeyAlg.EC_P384, KeyAlg.EC_P384, -35), id="ES384"),
    pytest.param((KeyAlg.RSA_2048, KeyAlg.RSA_2048, -37), id="PS256"),
]


@pytest.fixture(scope="module", params=FAMILIES)
def device(request: pytest.FixtureRequest) -> tuple[Device, int]:
    alg, identity_alg, cose_alg = request.param
    return make_device(alg, identity_alg), cose_alg


# -- the interop checks ------------------------------------------------------------------------
def test_pycose_verifies_the_quote_and_the_chain_walks_to_the_root(
    device: tuple[Device, int],
) -> None:
    dev, cose_alg = device
    nonce = bytes.fromhex("5eed") * 12
    quote = dev.session().attest(nonce)

    ok, msg, chain = pycose_verify(quote)
    assert ok
    assert msg.phdr[Algorithm].identifier == cose_alg
    assert not msg.uhdr  # everything that matters is protected
    assert [der(c) for c in chain] == [der(dev.attestation_cert), der(dev.pki.batch)]

    path = walk_chain(chain[0], chain[1:], dev.pki.root)
    assert [der(c) for c in path] == [
        der(dev.attestation_cert),
        der(dev.pki.batch),
        der(dev.pki.root),
    ]

    # The claims, read with plain cbor2 from the payload pycose verified.
    claims = cbor2.loads(msg.payload)
    assert claims[10] == nonce  # eat_nonce echoes the verifier's nonce
    assert claims[256] == spec.ueid_for_uid(UID)
    assert claims[265] == spec.PROFILE
    assert claims[spec.Claim.UID] == UID
    assert claims[spec.Claim.FIRMWARE_FLOOR] == 7
    # cnf carries the identity public key: pycose reads the COSE_Key, it equals the card's key.
    theirs = CoseKey.from_dict(dict(claims[8][1]))
    identity = dev.identity.public_key()
    if isinstance(identity, ec.EllipticCurvePublicKey):
        size = (identity.curve.key_size + 7) // 8
        assert theirs.x == identity.public_numbers().x.to_bytes(size, "big")
        assert theirs.y == identity.public_numbers().y.to_bytes(size, "big")
    else:
        assert int.from_bytes(theirs.n, "big") == identity.public_numbers().n
        assert int.from_bytes(theirs.e, "big") == identity.public_numbers().e
    assert spki(decode_quote(quote).identity_public_key) == spki(identity)


def test_extended_length_quote_verifies(device: tuple[Device, int]) -> None:
    dev, _ = device
    ok, _, _ = pycose_verify(dev.session(extended=True).attest(bytes(spec.NONCE_MAX)))
    assert ok


def _tamper_payload_nonce(quote: bytes, nonce: bytes) -> bytes:
    assert quote.count(nonce) == 1
    return quote.replace(nonce, bytes([nonce[0] ^ 1]) + nonce[1:])


def _tamper_signature(quote: bytes) -> bytes:
    return quote[:-1] + bytes([quote[-1] ^ 0x01])


def _tamper_protected_chain(quote: bytes, cert: bytes) -> bytes:
    # One byte inside the attestation certificate carried in the protected header.
    at = quote.index(cert) + len(cert) // 2
    return quote[:at] + bytes([quote[at] ^ 0x80]) + quote[at + 1 :]


def _swap_payload(quote: bytes, other: bytes) -> bytes:
    a, b = cbor2.loads(quote).value, cbor2.loads(other).value
    return cbor2.dumps(cbor2.CBORTag(18, [a[0], dict(a[1]), b[2], a[3]]))


def test_tampered_quotes_fail_pycose_verification(device: tuple[Device, int]) -> None:
    dev, _ = device
    nonce = b"fresh-nonce-0001"
    quote = dev.session().attest(nonce)
    other = dev.session().attest(b"fresh-nonce-0002")
    assert pycose_verify(quote)[0] and pycose_verify(other)[0]
    for bad in (
        _tamper_payload_nonce(quote, nonce),
        _tamper_signature(quote),
        _swap_payload(quote, other),
    ):
        assert not pycose_verify(bad)[0]
    # A byte flipped inside the protected x5chain: pycose (with the leaf it reads, if it still
    # parses) refuses it, or the leaf no longer parses at all.
    broken = _tamper_protected_chain(quote, der(dev.attestation_cert))
    try:
        ok = pycose_verify(broken)[0]
    except ValueError:
        ok = False
    assert not ok


def test_chain_walk_refuses_a_foreign_root_and_expired_certificates(
    device: tuple[Device, int],
) -> None:
    dev, _ = device
    chain = decode_quote(dev.session().attest(bytes(8))).certificates
    other = Pki.create(dev.pki.alg)
    with pytest.raises(VerificationError):
        walk_chain(chain[0], list(chain[1:]), other.root)
    with pytest.raises(VerificationError):  # the attestation certificate lives 30 days
        walk_chain(chain[0], list(chain[1:]), dev.pki.root, NOW + dt.timedelta(days=31))
    with pytest.raises(VerificationError):  # the batch CA is needed to reach the root
        walk_chain(chain[0], [], dev.pki.root)


def test_mixed_families_attestation_p256_identity_rsa() -> None:
    dev = make_device(KeyAlg.EC_P256, KeyAlg.RSA_2048)
    quote = dev.session().attest(bytes(range(8)))
    ok, msg, _ = pycose_verify(quote)
    assert ok
    cnf = CoseKey.from_dict(dict(cbor2.loads(msg.payload)[8][1]))
    identity = dev.identity.public_key()
    assert isinstance(identity, rsa.RSAPublicKey)
    assert int.from_bytes(cnf.n, "big") == identity.public_numbers().n


def test_python_cwt_verifies_the_quote(device: tuple[Device, int]) -> None:
    """A second COSE implementation nobody here wrote: python-cwt, unmodified."""
    dev, cose_alg = device
    family = {-7: "ES256", -35: "ES384", -37: "PS256"}[cose_alg]
    nonce = bytes.fromhex("c0ffee") * 8
    quote = dev.session().attest(nonce)
    pem = dev.attestation_cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = COSE.new().decode(quote, COSEKey.from_pem(pem, alg=family))
    assert cbor2.loads(payload)[10] == nonce
    tampered = quote[:-1] + bytes([quote[-1] ^ 1])
    with pytest.raises(Exception, match=r"(?i)verif|signature|fail"):
        COSE.new().decode(tampered, COSEKey.from_pem(pem, alg=family))

"""Attestation quotes per second through the host shim and the card, as a ratio to raw signing.

Each row personalises an attestation applet (the attestation key generated on the card and
certified by a throwaway CA), puts an identity key in place, and times ATTEST (a 16-byte nonce;
the answer, ~1.3 kB, comes back through 61xx/GET RESPONSE on short APDUs or in one extended APDU)
against the bound measured in alternation in the same run: one raw `cryptography` signature of
the same algorithm over a quote-sized payload (ECDSA P-256/SHA-256, P-384/SHA-384, RSA-2048
PSS/SHA-256). Ratio = quotes/s ÷ raw signatures/s (1.0 would mean the card, the CBOR/COSE
encoding and the APDU stack cost nothing beyond the one signature).

Run: .venv/bin/python bench/bench_attestation.py [--target S] [--reps N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from _util import (
    Paired,
    console,
    environment,
    fmt_rate,
    fmt_ratio,
    fmt_us,
    measure_paired,
    new_table,
)
from iotid.host.attestation import AttestationSession, perso_dgis_certificates, perso_dgis_generate
from iotid.host.protocol import SmartCardProtocol
from iotid.host.securitydomain import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.attestation import AttestationApplet
from iotid.se.identity import IdentityStore
from iotid.spec.algorithms import KeyAlg
from iotid.spec.identity import ATTESTATION_AID
from iotid.transport.loopback import LoopbackConnection

PAYLOAD = secrets.token_bytes(400)  # about what the Sig_structure of a quote holds besides x5chain


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench batch CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _session(alg: KeyAlg, extended: bool) -> AttestationSession:
    card = Card.create(None, applets=[AttestationApplet])
    proto = SmartCardProtocol(LoopbackConnection(card), extended=extended)
    sd = SecurityDomainSession(proto)
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(ATTESTATION_AID)
    sd.store_data(perso_dgis_generate(alg), last=False)
    public = AttestationSession(proto).attestation_public_key()
    ca_key, ca = _ca()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench attestation")]))
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    sd = SecurityDomainSession(proto)
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(ATTESTATION_AID)
    der = serialization.Encoding.DER
    sd.store_data(perso_dgis_certificates(cert.public_bytes(der), ca.public_bytes(der)))
    with card.nvm.transaction():
        IdentityStore(card.nvm, card.keys).provision(ec.generate_private_key(ec.SECP256R1()))
    return AttestationSession(proto)


def _raw_signer(alg: KeyAlg) -> object:
    if alg is KeyAlg.EC_P256:
        k256 = ec.generate_private_key(ec.SECP256R1())
        return lambda: k256.sign(PAYLOAD, ec.ECDSA(hashes.SHA256()))
    if alg is KeyAlg.EC_P384:
        k384 = ec.generate_private_key(ec.SECP384R1())
        return lambda: k384.sign(PAYLOAD, ec.ECDSA(hashes.SHA384()))
    krsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    return lambda: krsa.sign(PAYLOAD, pss, hashes.SHA256())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.2, help="seconds per batch")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    console.print(environment())
    rows: list[tuple[str, str, Paired]] = []
    for alg in (KeyAlg.EC_P256, KeyAlg.EC_P384, KeyAlg.RSA_2048):
        for extended in (False, True):
            session = _session(alg, extended)
            nonce = secrets.token_bytes(16)
            bound = _raw_signer(alg)
            assert callable(bound)
            paired = measure_paired(
                alg.name,
                lambda s=session, n=nonce: s.attest(n),
                bound,
                1,
                target_s=args.target,
                reps=args.reps,
            )
            rows.append((alg.name, "extended" if extended else "short", paired))
    table = new_table(
        "Attestation quotes/s (host shim + card) vs raw cryptography signatures/s, same run",
        [
            ("attestation key", "left"),
            ("APDUs", "left"),
            ("quotes/s", "right"),
            ("µs/quote", "right"),
            ("raw signs/s", "right"),
            ("ratio", "right"),
        ],
    )
    for alg_name, mode, p in rows:
        table.add_row(
            alg_name,
            mode,
            fmt_rate(p.subject.ops_per_s),
            fmt_us(p.subject.per_op),
            fmt_rate(p.bound.ops_per_s),
            fmt_ratio(p.ratio),
        )
    console.print(table)


if __name__ == "__main__":
    main()

"""X.509 certificates and CRLs signed by a key that stays in its key store (HSM or quorum store).

Scope: ``cryptography``'s builders only sign with an in-process private key, and our issuing keys
never leave their backend. So: the builder is signed once with a *throwaway* key of the same
algorithm, which yields the exact DER of the to-be-signed part (TBSCertificate / TBSCertList,
RFC 5280 §4.1.1.1 / §5.1.1.1) and the AlgorithmIdentifier; the TBS is then signed by the
:class:`~iotid.factory.keystore.Signer` and the outer SEQUENCE re-assembled with the real
signature. The throwaway key contributes nothing to the result: the subject public key is the
caller's (``builder.public_key``), the issuer name is the caller's, and the only place an issuer
key appears in a TBS is the AuthorityKeyIdentifier, which the caller sets from the signer's
public key (checked here). The result is re-parsed by ``cryptography`` and its signature verified
against the signer's public key before it is returned.

The only hand-written ASN.1 is the DER TLV glue of ``_resign`` (tag, length, value of the
three-element outer SEQUENCE): the hashing, signing and encoding of everything inside the TBS
is ``cryptography``'s.
Not in scope: choosing the certificate's content (callers build it), CSRs, OCSP responses.
"""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from iotid.factory.keystore import PublicKey, Signer
from iotid.spec.algorithms import KeyAlg

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
_DER = Encoding.DER

# X.690 §8.1.2 identifier octets (universal class, constructed bit for SEQUENCE).
_TAG_SEQUENCE = 0x30
_TAG_BIT_STRING = 0x03


class X509SignError(Exception):
    """The builder or the signer could not produce a valid certificate / CRL."""


def hash_for(alg: KeyAlg) -> hashes.SHA256 | hashes.SHA384:
    """The signature hash X.509 uses with this key (the key store's convention)."""
    if alg is KeyAlg.EC_P384:
        return hashes.SHA384()
    if alg.is_ec or alg.is_rsa:
        return hashes.SHA256()
    raise X509SignError(f"{alg.name} cannot sign certificates")


def sign_certificate(builder: x509.CertificateBuilder, signer: Signer) -> x509.Certificate:
    """``builder`` signed by ``signer`` (ECDSA with the curve's hash, RSA PKCS#1 v1.5 SHA-256)."""
    issuer_key = signer.public_key()
    draft = builder.sign(_throwaway(signer.alg), hash_for(signer.alg))
    _check_aki(draft.extensions, issuer_key)
    tbs = draft.tbs_certificate_bytes
    der = _resign(draft.public_bytes(_DER), signer.sign(tbs))
    cert = x509.load_der_x509_certificate(der)
    if cert.tbs_certificate_bytes != tbs:  # pragma: no cover - the glue copies the TBS verbatim
        raise X509SignError("re-assembled certificate does not carry the signed TBS")
    _verify(issuer_key, cert.signature, tbs, signer.alg)
    return cert


def sign_crl(
    builder: x509.CertificateRevocationListBuilder, signer: Signer
) -> x509.CertificateRevocationList:
    """A CRL from ``builder`` signed by ``signer`` (same algorithms as :func:`sign_certificate`)."""
    issuer_key = signer.public_key()
    draft = builder.sign(_throwaway(signer.alg), hash_for(signer.alg))
    _check_aki(draft.extensions, issuer_key)
    tbs = draft.tbs_certlist_bytes
    der = _resign(draft.public_bytes(_DER), signer.sign(tbs))
    crl = x509.load_der_x509_crl(der)
    if crl.tbs_certlist_bytes != tbs:  # pragma: no cover - the glue copies the TBS verbatim
        raise X509SignError("re-assembled CRL does not carry the signed TBS")
    _verify(issuer_key, crl.signature, tbs, signer.alg)
    return crl


@functools.cache
def _throwaway(alg: KeyAlg) -> _PrivateKey:
    """A process-local key whose signatures are always discarded (cached: RSA keygen is slow)."""
    if alg is KeyAlg.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if alg is KeyAlg.EC_P384:
        return ec.generate_private_key(ec.SECP384R1())
    if alg.is_rsa:
        return rsa.generate_private_key(public_exponent=65537, key_size=alg.size_bits)
    raise X509SignError(f"{alg.name} cannot sign certificates")


def _check_aki(extensions: x509.Extensions, issuer_key: PublicKey) -> None:
    """RFC 5280 §4.2.1.1: the AKI, if present, must name the real issuer key, not the throwaway."""
    try:
        aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return
    expected = x509.SubjectKeyIdentifier.from_public_key(issuer_key).digest
    if aki.key_identifier is not None and aki.key_identifier != expected:
        raise X509SignError(
            "AuthorityKeyIdentifier does not name the signer's public key "
            "(use AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()))"
        )


def _verify(key: PublicKey, signature: bytes, tbs: bytes, alg: KeyAlg) -> None:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, tbs, ec.ECDSA(hash_for(alg)))
        else:
            key.verify(signature, tbs, padding.PKCS1v15(), hash_for(alg))
    except InvalidSignature:
        raise X509SignError(
            "the signer's signature does not verify under its public key "
            "(wrong key, wrong hash or wrong padding in the backend)"
        ) from None


# --- DER glue (X.690 §8.1 TLV; Certificate / CertificateList, RFC 5280 §4.1 / §5.1) -------------


def _read_tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER TLV at ``offset`` (single-byte tags only)."""
    if offset + 2 > len(data):
        raise X509SignError("DER: truncated TLV header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise X509SignError("DER: multi-byte tags are not expected here")
    first = data[offset + 1]
    pos = offset + 2
    if first < 0x80:  # X.690 §8.1.3.4 short form
        length = first
    elif first == 0x80:  # X.690 §8.1.3.6 indefinite form: not DER (§10.1)
        raise X509SignError("DER: indefinite length")
    else:  # X.690 §8.1.3.5 long form
        count = first & 0x7F
        if count > 4 or pos + count > len(data):
            raise X509SignError("DER: bad long-form length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise X509SignError("DER: value runs past the end")
    return tag, pos, end


def _encode_length(length: int) -> bytes:
    """X.690 §10.1: the definite form with the minimum number of octets."""
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _encode_length(len(value)) + value


def _resign(signed: bytes, signature: bytes) -> bytes:
    """Replace the signature of ``SEQUENCE { tbs, signatureAlgorithm, BIT STRING }``.

    The TBS and AlgorithmIdentifier TLVs are copied byte for byte; the new BIT STRING has zero
    unused bits (X.690 §8.6.2.2; RFC 5280 signatures are whole octets).
    """
    tag, start, end = _read_tlv(signed, 0)
    if tag != _TAG_SEQUENCE or end != len(signed):
        raise X509SignError("DER: not a single outer SEQUENCE")
    tbs_tag, _, tbs_end = _read_tlv(signed, start)
    alg_tag, _, alg_end = _read_tlv(signed, tbs_end)
    sig_tag, _, sig_end = _read_tlv(signed, alg_end)
    if (tbs_tag, alg_tag, sig_tag) != (_TAG_SEQUENCE, _TAG_SEQUENCE, _TAG_BIT_STRING):
        raise X509SignError("DER: outer SEQUENCE is not { SEQUENCE, SEQUENCE, BIT STRING }")
    if sig_end != end:
        raise X509SignError("DER: trailing data in the outer SEQUENCE")
    body = signed[start:alg_end] + _tlv(_TAG_BIT_STRING, b"\x00" + signature)
    return _tlv(_TAG_SEQUENCE, body)


__all__ = ["X509SignError", "hash_for", "sign_certificate", "sign_crl"]

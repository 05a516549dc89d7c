"""Certificate profile pieces the factory's CAs share (RFC 5280 section 4.2.1.3 key usage).

Scope: the two key usages of our hierarchy: CA certificates (keyCertSign, cRLSign) and
end-entity signing certificates (digitalSignature). Not in scope: names, validity, the builders.
"""

from __future__ import annotations

from cryptography import x509


def key_usage(*, ca: bool) -> x509.KeyUsage:
    """keyCertSign + cRLSign for a CA, digitalSignature for an end-entity signing key."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


CA_KEY_USAGE = key_usage(ca=True)
SIGNING_KEY_USAGE = key_usage(ca=False)

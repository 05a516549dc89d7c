"""Cryptographic glue over pyca/cryptography.

Scope: the small helpers protocol code needs (AES-CMAC, raw AES-CBC, one-block AES, GP key check
values, ISO/IEC 9797-1 method 2 padding). Every primitive comes from ``cryptography``; nothing here
implements a cipher. Not covered: SCP03 itself (:mod:`iotid.scp03`), key storage. This package
imports nothing else from ``iotid``.
"""

from __future__ import annotations

from .aes import (
    AES_BLOCK,
    AES_KEY_LENGTHS,
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    aes_cmac,
    aes_encrypt_block,
    aes_kcv,
)
from .padding import PaddingError, pad_iso9797_m2, unpad_iso9797_m2

__all__ = [
    "AES_BLOCK",
    "AES_KEY_LENGTHS",
    "PaddingError",
    "aes_cbc_decrypt",
    "aes_cbc_encrypt",
    "aes_cmac",
    "aes_encrypt_block",
    "aes_kcv",
    "pad_iso9797_m2",
    "unpad_iso9797_m2",
]

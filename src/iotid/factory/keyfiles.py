"""Files and sealed blobs shared by the key store backends (``softstore``, ``hsmstore``).

Scope: key-name rules (a name is a relative path and a token label), AES-256-GCM sealing of small
secrets under a KEK (``cryptography``'s AESGCM; the nonce and ciphertext as base64 JSON fields),
write-once JSON files (mode 0600, atomic, never replacing an existing file), the line-key text
form and the fingerprint of a secret. Not in scope: what is sealed or why (the backends).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from iotid.factory.keystore import KeyStoreError

KEK_LENGTH = 32
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_NAME = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_NAME_MAX = 200


def check_name(name: str) -> str:
    """A key name is a relative file path and a token label: ``/``-separated segments of letters,
    digits, ``.``, ``_``, ``-``, none starting with ``.`` (so never ``..``), at most 200 long."""
    if len(name) > _NAME_MAX or not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid key name {name!r}: '/'-separated segments of letters, digits, '.', '_', "
            "'-', none starting with '.'"
        )
    return name


def seal(kek: bytes, plaintext: bytes, aad: bytes) -> dict[str, str]:
    """AES-256-GCM under ``kek`` with a fresh 96-bit nonce (NIST SP 800-38D §8.2.2)."""
    nonce = os.urandom(12)
    return {"nonce": b64(nonce), "ciphertext": b64(AESGCM(kek).encrypt(nonce, plaintext, aad))}


def unseal(kek: bytes, blob: Any, aad: bytes) -> bytes | None:
    """The plaintext, or None when the tag does not verify (wrong KEK or tampered data)."""
    try:
        return AESGCM(kek).decrypt(unb64(blob["nonce"]), unb64(blob["ciphertext"]), aad)
    except (InvalidTag, KeyError, TypeError, ValueError):
        return None


def write_new(path: Path, document: dict[str, Any]) -> None:
    """Write JSON to ``path`` (mode 0600) atomically; KeyStoreError if ``path`` exists."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces an existing file
        except FileExistsError:
            raise KeyStoreError(f"{path.name} already exists in {path.parent}") from None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError):
        raise KeyStoreError(f"{what} ({path}) is unreadable or not JSON") from None
    if not isinstance(document, dict):
        raise KeyStoreError(f"{what} ({path}) is not a JSON object")
    return document


def normalise_line_key(line_key: bytes) -> bytes:
    """A line key as 32 raw bytes; its hex text (as ``line.key`` files hold it) is accepted too."""
    text = line_key.strip()
    if len(text) == 2 * KEK_LENGTH and re.fullmatch(rb"[0-9A-Fa-f]+", text):
        return bytes.fromhex(text.decode("ascii"))
    return line_key


def secret_fingerprint(secret: bytes) -> str:
    """KeyInfo.fingerprint of a secret: SHA-256 of an HMAC check value (the secret stays hidden)."""
    tag = hmac.HMAC(secret, hashes.SHA256())
    tag.update(b"iotid key check value")
    digest = hashes.Hash(hashes.SHA256())
    digest.update(tag.finalize())
    return digest.finalize().hex()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected base64 text")
    return base64.b64decode(text, validate=True)


__all__ = [
    "KEK_LENGTH",
    "b64",
    "check_name",
    "normalise_line_key",
    "read_json",
    "seal",
    "secret_fingerprint",
    "unb64",
    "unseal",
    "write_new",
]

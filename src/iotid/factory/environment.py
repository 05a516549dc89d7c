"""Software and environment fingerprints for the ceremony record.

Scope: the public facts an auditor needs to say *which software on which machine* performed a
ceremony step: Python version and implementation, platform, host name, the versions of iotid,
``cryptography`` (and the OpenSSL it runs on), ``shamir-mnemonic`` and ``python-pkcs11``, the
key store backend, and a SHA-256 over the installed iotid package source (every file under the
package directory except byte-code caches, in sorted order of their relative paths: for each,
``path NUL sha256(content) LF``). Nothing secret: no environment variables, no user files, no
PIN or token serial beyond what the caller passes as the backend description.
Not in scope: attesting the machine (TPM quotes, reproducible builds).
"""

from __future__ import annotations

import hashlib
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend

import iotid

_PACKAGES = ("iotid", "cryptography", "shamir-mnemonic", "python-pkcs11")
_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc", ".pyo")


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def source_tree_digest(root: Path | None = None) -> tuple[str, int]:
    """(SHA-256 hex, number of files) of the package source tree under ``root``."""
    base = root if root is not None else Path(iotid.__file__).resolve().parent
    files = sorted(
        p.relative_to(base).as_posix()
        for p in base.rglob("*")
        if p.is_file()
        and not _SKIP_DIRS.intersection(p.relative_to(base).parts)
        and not p.name.endswith(_SKIP_SUFFIXES)
    )
    outer = hashlib.sha256()
    for rel in files:
        inner = hashlib.sha256((base / rel).read_bytes()).hexdigest()
        outer.update(rel.encode("utf-8") + b"\0" + inner.encode("ascii") + b"\n")
    return outer.hexdigest(), len(files)


def fingerprints(keystore_backend: str) -> dict[str, Any]:
    """The fingerprints for one record entry (JSON-ready)."""
    digest, count = source_tree_digest()
    return {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable_sha256": _file_sha256(Path(sys.executable)),
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "platform": platform.platform(),
        },
        "hostname": socket.gethostname(),
        "packages": {name: package_version(name) for name in _PACKAGES},
        "openssl": str(openssl_backend.openssl_version_text()),
        "iotid_source": {"sha256": digest, "files": count},
        "keystore_backend": keystore_backend,
    }


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.resolve().read_bytes()).hexdigest()
    except OSError:
        return "unreadable"


__all__ = ["fingerprints", "package_version", "source_tree_digest"]

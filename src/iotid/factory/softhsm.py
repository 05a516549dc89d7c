"""SoftHSM2 for tests and development: a throw-away PKCS#11 token in a directory of our own.

Scope: finding ``libsofthsm2.so``, writing a ``softhsm2.conf`` whose token directory is inside the
given directory (never the system token directory), running ``softhsm2-util --init-token``
(no shell) and forgetting a loaded module so the next load re-reads ``SOFTHSM2_CONF``.
Not in scope: using the token (``hsmstore``). Never for production: the PINs are passed on the
``softhsm2-util`` command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess  # runs softhsm2-util with a fixed argv
from pathlib import Path

import pkcs11

from iotid.factory.keystore import KeyStoreError

SOFTHSM_MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


def find_softhsm_module() -> str:
    """The SoftHSM2 PKCS#11 module (``$SOFTHSM2_MODULE`` first, then the usual install paths)."""
    for candidate in (os.environ.get("SOFTHSM2_MODULE", ""), *SOFTHSM_MODULES):
        if candidate and Path(candidate).is_file():
            return candidate
    raise KeyStoreError("libsofthsm2.so not found: install SoftHSM2 (Debian: softhsm2)")


def provision_softhsm_token(
    directory: Path, label: str, so_pin: str, user_pin: str
) -> tuple[str, Path]:
    """Create a SoftHSM2 token in ``directory`` (dev/tests only); returns (module path, conf).

    Writes ``directory/softhsm2.conf`` (token directory ``directory/tokens``) unless present and
    runs ``softhsm2-util --init-token --free`` with ``SOFTHSM2_CONF`` set for that process only.
    This process must set ``SOFTHSM2_CONF`` to the returned conf before the module is loaded;
    if it was already loaded, call :func:`unload_module` first. The PINs appear on the
    softhsm2-util command line: use this only for throw-away tokens.
    """
    util = shutil.which("softhsm2-util")
    if util is None:
        raise KeyStoreError("softhsm2-util not found: install SoftHSM2 (Debian: softhsm2)")
    module = find_softhsm_module()
    directory = Path(directory).resolve()
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    if not conf.exists():
        conf.write_text(
            f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
            "log.level = ERROR\nslots.removable = false\n",
            encoding="utf-8",
        )
    argv = [util, "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", user_pin]
    result = subprocess.run(  # noqa: S603 - fixed argv (softhsm2-util by full path), no shell
        argv,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise KeyStoreError(f"softhsm2-util failed: {result.stderr.strip() or result.returncode}")
    return module, conf


def unload_module(module_path: str) -> None:
    """Forget a loaded PKCS#11 module so the next use re-reads its configuration (SoftHSM2)."""
    pkcs11.unload(module_path)


__all__ = ["SOFTHSM_MODULES", "find_softhsm_module", "provision_softhsm_token", "unload_module"]

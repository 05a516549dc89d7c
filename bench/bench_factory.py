"""Benchmark: cards personalised per second by the factory line on one core, as a ratio to the
raw cryptography the line and the card must do for those cards.

Scope: in a temporary directory, a 2-of-3 software ceremony (``init_ceremony``) and one p256
batch (``create_batch`` with two of the share files); then, pinned to CPU 0
(``os.sched_setaffinity(0, {0})``):

1. **census**: two cards personalised with counting wrappers on every cryptographic entry point
   of the path, with sizes and curves: ``iotid.crypto.aes`` (CMAC, CBC, one block), the SCP03 KDF
   (``iotid.scp03.kdf.derive``), ISD key diversification (HKDF), identity key derivation, EC key
   generation and derivation, ECDSA signatures and checks, certificate signatures
   (``CertificateBuilder.sign``) and signature checks (``verify_directly_issued_by``), the key
   store's AES-GCM unseal. Ops inside ``_Line.personalise_one`` are per card, the others per
   batch; ops inside ``Card.process`` are the card's. A ``sys.setprofile`` hook checks that no
   ``cryptography`` primitive ran outside the wrappers.
2. **bound**: that mix replayed raw with ``cryptography`` only. The timed line run replays one
   card's mix after every K-th card (``--bound-every``, from the progress callback; its time is
   subtracted from the line's), so each bound sample is paired with the cards just before it:
   ratio = median over samples of (raw crypto time of a card ÷ line time per card in that
   window); 1.0 would mean the line and the emulated card add nothing to the cryptography.
3. **line**: ``personalise_batch`` for N cards (``--count``, default 200): cards/s, ms/card,
   the projected time of 10,000 cards (mean ms/card x 10,000) against the issue's 5-minute goal,
   or the measured time when N >= 10,000.
4. **phases**: N more cards with timers on the routine's steps (card creation, each SCP03
   session, each applet's INSTALL [for personalization] + STORE DATA, attestation certification,
   PUT KEY, SET STATUS, journal, manifest) and, across them, ``Card.process`` and the NVM image
   writes; ``--profile K`` adds a cProfile of K cards.

Not counted in the bound: ``hashlib`` SHA-256 (NVM image digests, certificate fingerprints:
storage integrity and bookkeeping). Not in scope: the PKCS#11 backend, multi-core lines.

Run: ``.venv/bin/python bench/bench_factory.py`` (~20-40 s); a whole batch:
``--count 10000 --no-phases --bound-every 50`` (4-6 min).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import os
import pstats
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFCMAC, KBKDFHMAC, CounterLocation, Mode

from _util import console, environment, filesystem_of, fmt_ratio, measure, new_table
from iotid.crypto import aes, identity_kdf
from iotid.factory import batch, diversify, keyfiles, line
from iotid.factory.batch import create_batch
from iotid.factory.ceremony import init_ceremony
from iotid.host import attestation as host_attestation
from iotid.host import personalisation
from iotid.host.securitydomain import SecurityDomainSession
from iotid.scp03 import kdf as scp03_kdf
from iotid.se.card import Card
from iotid.se.nvm import Nvm
from iotid.spec.algorithms import KeyAlg
from iotid.spec.identity import (
    ATTESTATION_AID,
    FIRMWARE_AID,
    MTLS_AID,
    PROVISIONING_AID,
    ROTATION_AID,
)

GOAL_CARDS = 10_000
GOAL_S = 300.0
BATCH = "bench"
CUSTODIANS = ["alice", "bob", "carol"]
APPLETS = {
    PROVISIONING_AID: "provisioning",
    ATTESTATION_AID: "attestation",
    MTLS_AID: "mTLS",
    FIRMWARE_AID: "firmware",
    ROTATION_AID: "rotation",
}
_CURVES: dict[str, ec.EllipticCurve] = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}
_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384()}
#: C-level ``cryptography`` primitives; any call to one outside a counting wrapper is reported.
_PRIMITIVES = frozenset(
    {
        "CMAC.update",
        "CMAC.finalize",
        "CipherContext.update",
        "CipherContext.finalize",
        "AESGCM.encrypt",
        "AESGCM.decrypt",
        "KBKDFCMAC.derive",
        "KBKDFHMAC.derive",
        "HKDF.derive",
        "HMAC.finalize",
        "Scrypt.derive",
        "PBKDF2HMAC.derive",
        "generate_private_key",
        "derive_private_key",
        "ECPrivateKey.sign",
        "ECPrivateKey.exchange",
        "ECPublicKey.verify",
        "RSAPrivateKey.sign",
        "RSAPublicKey.verify",
        "Certificate.verify_directly_issued_by",
        "create_x509_certificate",
    }
)

Op = tuple[Any, ...]  # (kind, parameters...): hashable, replayable


# -- set-up -------------------------------------------------------------------------------------
def pin_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):  # pragma: no cover - Linux has it
        return "not pinned (no sched_setaffinity on this platform)"
    os.sched_setaffinity(0, {0})
    return "pinned to CPU 0 (os.sched_setaffinity(0, {0}))"


def make_factory(tmp: Path) -> Path:
    """A 2-of-3 software ceremony and one p256 batch made with two of the three share files."""
    result = init_ceremony(tmp / "site", 2, 3, CUSTODIANS, operator="bench")
    shares = [s.path for s in result.share_files]
    create_batch(result.directory, BATCH, "p256", shares[:2])
    return result.directory


# -- patching helpers -----------------------------------------------------------------------------
class Patcher:
    """setattr with undo; ``everywhere`` also rebinds ``from x import f`` copies in iotid.*."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def set(self, owner: Any, name: str, value: Any) -> None:
        self._undo.append((owner, name, owner.__dict__[name]))
        setattr(owner, name, value)

    def everywhere(self, original: Callable[..., Any], wrapper: Callable[..., Any]) -> None:
        for mod in list(sys.modules.values()):
            if not isinstance(mod, ModuleType):
                continue
            if not (mod.__name__.startswith("iotid") or mod.__name__ == "__main__"):
                continue
            for name, value in list(vars(mod).items()):
                if value is original:
                    self.set(mod, name, wrapper)

    def undo(self) -> None:
        while self._undo:
            owner, name, value = self._undo.pop()
            setattr(owner, name, value)


def _curve_name(key: Any) -> str:
    return str(key.curve.name)


def _hash_name(sig_alg: Any) -> tuple[str, bool]:
    algorithm = sig_alg.algorithm
    if isinstance(algorithm, Prehashed):
        return algorithm._algorithm.name, True
    return str(algorithm.name), False


# -- 1. census ----------------------------------------------------------------------------------
@dataclass
class Census:
    """Crypto ops per card (inside ``_Line.personalise_one``) and per batch (outside it)."""

    cards: list[Counter[Op]] = field(default_factory=list)
    #: The same ops as ``cards`` (all cards summed) that ran inside ``Card.process``.
    card_side: Counter[Op] = field(default_factory=Counter)
    batch: Counter[Op] = field(default_factory=Counter)
    unattributed: Counter[str] = field(default_factory=Counter)
    _depth: int = 0
    _in_card: int = 0
    _card: Counter[Op] | None = None

    def record(self, op: Op) -> None:
        (self._card if self._card is not None else self.batch)[op] += 1
        if self._in_card and self._card is not None:
            self.card_side[op] += 1

    def inside_card(self, process: Callable[..., bytes]) -> Callable[..., bytes]:
        @functools.wraps(process)
        def wrapper(*args: Any, **kwargs: Any) -> bytes:
            self._in_card += 1
            try:
                return process(*args, **kwargs)
            finally:
                self._in_card -= 1

        return wrapper

    def counting(self, fn: Callable[..., Any], describe: Callable[..., Op]) -> Callable[..., Any]:
        """``fn``, recording ``describe(result, *args, **kwargs)`` when it is the outermost
        counted op (a KDF's inner CMACs are the KDF's, not separate ops)."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            outer = self._depth == 0
            self._depth += 1
            try:
                result = fn(*args, **kwargs)
            finally:
                self._depth -= 1
            if outer:
                self.record(describe(result, *args, **kwargs))
            return result

        return wrapper

    def profile_hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "c_call" or self._depth:
            return
        name = getattr(arg, "__qualname__", getattr(arg, "__name__", "?"))
        if name in _PRIMITIVES:
            self.unattributed[name] += 1


def _identity_op(result: Any, master: bytes, uid: bytes, alg: KeyAlg, *a: Any, **k: Any) -> Op:
    curve, n = identity_kdf._CURVES[alg]
    return ("identity key (KBKDF-HMAC-SHA256 + EC derive)", curve.name, (n.bit_length() + 64) // 8)


def _sig_op(kind: str, key: Any, alg: Any, data: bytes) -> Op:
    return (kind, _curve_name(key), *_hash_name(alg), len(data))


def _cert_check_op(result: Any, cert: x509.Certificate, issuer: x509.Certificate) -> Op:
    algorithm = cert.signature_hash_algorithm
    return (
        "X.509 signature check",
        _curve_name(issuer.public_key()),
        algorithm.name if algorithm is not None else "?",
        False,
        len(cert.tbs_certificate_bytes),
    )


def _builder_op(result: x509.Certificate, builder: Any, key: Any, algorithm: Any, *a: Any) -> Op:
    size = len(result.tbs_certificate_bytes)
    return ("X.509 certificate signature", _curve_name(key), algorithm.name, False, size)


@contextlib.contextmanager
def census_wrappers(census: Census) -> Iterator[None]:
    """Counting wrappers on every crypto entry point of the line and the card (undone after)."""
    p = Patcher()
    c = census.counting
    f = aes
    try:
        p.everywhere(f.aes_cmac, c(f.aes_cmac, lambda r, k, d: ("AES-CMAC", len(k), len(d))))
        p.everywhere(
            f.aes_cbc_encrypt,
            c(f.aes_cbc_encrypt, lambda r, k, iv, d: ("AES-CBC encrypt", len(k), len(d))),
        )
        p.everywhere(
            f.aes_cbc_decrypt,
            c(f.aes_cbc_decrypt, lambda r, k, iv, d: ("AES-CBC decrypt", len(k), len(d))),
        )
        p.everywhere(
            f.aes_encrypt_block, c(f.aes_encrypt_block, lambda r, k, b: ("AES block", len(k)))
        )
        p.everywhere(
            scp03_kdf.derive,
            c(
                scp03_kdf.derive,
                lambda r, k, const, ctx, bits: (
                    "SCP03 KDF (KBKDF-CMAC)",
                    len(k),
                    bits // 8,
                    len(ctx),
                ),
            ),
        )
        p.everywhere(
            diversify.diversify_isd_keys,
            c(diversify.diversify_isd_keys, lambda r, m, uid: ("ISD keys (HKDF-SHA256)", len(uid))),
        )
        p.everywhere(
            identity_kdf.derive_identity_key, c(identity_kdf.derive_identity_key, _identity_op)
        )
        p.set(
            ec,
            "generate_private_key",
            c(ec.generate_private_key, lambda r, curve, *a: ("EC key generation", curve.name)),
        )
        p.set(
            ec,
            "derive_private_key",
            c(ec.derive_private_key, lambda r, d, curve, *a: ("EC key derivation", curve.name)),
        )
        sample = ec.generate_private_key(ec.SECP256R1())
        priv_type, pub_type = type(sample), type(sample.public_key())
        p.set(
            priv_type,
            "sign",
            c(priv_type.sign, lambda r, key, data, alg: _sig_op("ECDSA sign", key, alg, data)),
        )
        p.set(
            pub_type,
            "verify",
            c(
                pub_type.verify,
                lambda r, key, sig, data, alg: _sig_op("ECDSA verify", key, alg, data),
            ),
        )
        check = x509.Certificate.verify_directly_issued_by
        p.set(x509.Certificate, "verify_directly_issued_by", c(check, _cert_check_op))
        p.set(x509.CertificateBuilder, "sign", c(x509.CertificateBuilder.sign, _builder_op))
        p.everywhere(
            keyfiles.unseal,
            c(
                keyfiles.unseal,
                lambda r, kek, blob, aad: ("AES-GCM unseal", len(kek), len(r or b""), len(aad)),
            ),
        )
        yield
    finally:
        p.undo()


def run_census(directory: Path, out: Path, cards: int = 2) -> Census:
    census = Census()
    original = line._Line.personalise_one

    def one(self: Any, *args: Any, **kwargs: Any) -> Any:
        census._card = Counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            census.cards.append(census._card)
            census._card = None

    p = Patcher()
    p.set(line._Line, "personalise_one", one)
    p.set(Card, "process", census.inside_card(Card.process))
    try:
        with census_wrappers(census):
            sys.setprofile(census.profile_hook)
            try:
                line.personalise_batch(directory, BATCH, cards, out)
            finally:
                sys.setprofile(None)
    finally:
        p.undo()
    return census


# -- 2. the bound: the same ops, raw ------------------------------------------------------------
_KEY16 = bytes(range(16))


def _raw_op(op: Op) -> Callable[[], object]:
    """A zero-argument callable doing ``op`` straight with ``cryptography``."""
    kind = op[0]
    if kind == "AES-CMAC":
        key, data = secrets.token_bytes(op[1]), bytes(op[2])

        def cmac() -> bytes:
            mac = CMAC(algorithms.AES(key))
            mac.update(data)
            return mac.finalize()

        return cmac
    if kind in ("AES-CBC encrypt", "AES-CBC decrypt"):
        key, data, iv = secrets.token_bytes(op[1]), bytes(op[2]), bytes(16)
        enc = kind == "AES-CBC encrypt"

        def cbc() -> bytes:
            cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
            ctx = cipher.encryptor() if enc else cipher.decryptor()
            return ctx.update(data) + ctx.finalize()

        return cbc
    if kind == "AES block":
        key, block = secrets.token_bytes(op[1]), bytes(16)

        def blk() -> bytes:
            ctx = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305 - one block
            return ctx.update(block) + ctx.finalize()

        return blk
    if kind == "SCP03 KDF (KBKDF-CMAC)":
        key, length, fixed = secrets.token_bytes(op[1]), op[2], bytes(16 + op[3])

        def kbkdf() -> bytes:
            return KBKDFCMAC(
                algorithms.AES,
                Mode.CounterMode,
                length,
                1,
                None,
                CounterLocation.MiddleFixed,
                None,
                None,
                fixed,
                break_location=15,
            ).derive(key)

        return kbkdf
    if kind == "ISD keys (HKDF-SHA256)":
        master, info = secrets.token_bytes(32), bytes(12 + op[1])
        return lambda: HKDF(hashes.SHA256(), 48, salt=None, info=info).derive(master)
    if kind == "identity key (KBKDF-HMAC-SHA256 + EC derive)":
        master, curve, length = secrets.token_bytes(32), _CURVES[op[1]], op[2]

        def identity() -> object:  # SP 800-108 counter mode, as iotid.crypto.identity_kdf
            okm = KBKDFHMAC(
                algorithm=hashes.SHA256(),
                mode=Mode.CounterMode,
                length=length,
                rlen=4,
                llen=4,
                location=CounterLocation.BeforeFixed,
                label=b"identity-v1",
                context=bytes(10),
                fixed=None,
            ).derive(master)
            return ec.derive_private_key(int.from_bytes(okm[:24], "big") + 1, curve)

        return identity
    if kind == "EC key generation":
        curve = _CURVES[op[1]]
        return lambda: ec.generate_private_key(curve)
    if kind == "EC key derivation":
        curve = _CURVES[op[1]]
        d = int.from_bytes(secrets.token_bytes(24), "big") + 1
        return lambda: ec.derive_private_key(d, curve)
    if kind in ("ECDSA sign", "X.509 certificate signature"):
        priv = ec.generate_private_key(_CURVES[op[1]])
        h, data = _HASHES[op[2]], bytes(op[4])
        if op[3]:  # prehashed: the card signs a digest
            data = bytes(h.digest_size)
            algorithm = ec.ECDSA(Prehashed(h))
        else:
            algorithm = ec.ECDSA(h)
        return lambda: priv.sign(data, algorithm)
    if kind in ("ECDSA verify", "X.509 signature check"):
        priv = ec.generate_private_key(_CURVES[op[1]])
        h, data = _HASHES[op[2]], bytes(op[4])
        algorithm = ec.ECDSA(Prehashed(h)) if op[3] else ec.ECDSA(h)
        if op[3]:
            data = bytes(h.digest_size)
        signature, pub = priv.sign(data, algorithm), priv.public_key()
        return lambda: pub.verify(signature, data, algorithm)
    if kind == "AES-GCM unseal":
        gcm, nonce, aad = AESGCM(secrets.token_bytes(op[1])), bytes(12), bytes(op[3])
        sealed = gcm.encrypt(nonce, bytes(op[2]), aad)
        return lambda: gcm.decrypt(nonce, sealed, aad)
    raise SystemExit(f"the bench cannot replay {op!r}")


def _mix(ops: Counter[Op]) -> Callable[[], None]:
    calls = [(_raw_op(op), n) for op, n in sorted(ops.items(), key=repr)]

    def run() -> None:
        for fn, n in calls:
            for _ in range(n):
                fn()

    return run


def describe_op(op: Op) -> str:
    kind = op[0]
    if kind in ("AES-CMAC", "AES-CBC encrypt", "AES-CBC decrypt"):
        return f"{kind}, AES-{8 * op[1]}, {op[2]} B"
    if kind == "AES block":
        return f"AES block (ICV / KCV), AES-{8 * op[1]}"
    if kind == "SCP03 KDF (KBKDF-CMAC)":
        return f"{kind} -> {op[2]} B, context {op[3]} B"
    if kind in (
        "ECDSA sign",
        "ECDSA verify",
        "X.509 certificate signature",
        "X.509 signature check",
    ):
        pre = ", prehashed" if op[3] else ""
        return f"{kind}, {op[1]}, {op[2]}{pre}, {op[4]} B"
    return ", ".join(str(x) for x in op)


# -- 4. phases ----------------------------------------------------------------------------------
@dataclass
class Phases:
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: Counter[str] = field(default_factory=Counter)
    per_batch: set[str] = field(default_factory=set)
    order: list[str] = field(default_factory=list)
    applet: str = "?"
    session: int = 0

    def add(self, label: str, seconds: float) -> None:
        if label not in self.seconds:
            self.order.append(label)
        self.seconds[label] += seconds
        self.calls[label] += 1

    def timed(self, label: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = label(*args, **kwargs) if callable(label) else label
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - start)

        return wrapper


@contextlib.contextmanager
def phase_wrappers(ph: Phases) -> Iterator[None]:
    p = Patcher()
    sd = SecurityDomainSession
    try:
        create = Card.create.__func__  # type: ignore[attr-defined]
        p.set(Card, "create", classmethod(ph.timed("card creation (Card.create)", create)))
        first = line._Line.personalise_one

        def reset(*args: Any, **kwargs: Any) -> Any:
            ph.session = 0
            return first(*args, **kwargs)

        p.set(line._Line, "personalise_one", reset)

        def session_label(*_: Any) -> str:
            ph.session += 1
            what = {1: "GP test keys", 2: "re-opened for the certificate", 3: "card's own keys"}
            return f"SCP03 session {ph.session} ({what.get(ph.session, '?')})"

        p.set(personalisation, "_session", ph.timed(session_label, personalisation._session))
        p.set(sd, "get_cplc", ph.timed("card checks (GET DATA CPLC, GET STATUS)", sd.get_cplc))
        p.set(sd, "get_status", ph.timed("card checks (GET DATA CPLC, GET STATUS)", sd.get_status))

        def install_label(_: Any, aid: bytes, *a: Any, **k: Any) -> str:
            ph.applet = APPLETS.get(bytes(aid), bytes(aid).hex())
            return f"{ph.applet}: INSTALL for perso + STORE DATA"

        p.set(
            sd,
            "install_for_personalization",
            ph.timed(install_label, sd.install_for_personalization),
        )
        p.set(
            sd,
            "store_data",
            ph.timed(lambda *a, **k: f"{ph.applet}: INSTALL for perso + STORE DATA", sd.store_data),
        )
        session_cls = host_attestation.AttestationSession
        p.set(
            session_cls,
            "attestation_public_key",
            ph.timed("attestation: read the public key", session_cls.attestation_public_key),
        )
        make_certifier = batch.attestation_certifier  # what the line module imported

        def certifier(*args: Any, **kwargs: Any) -> Any:
            return ph.timed(
                "attestation certificate (batch CA signs)", make_certifier(*args, **kwargs)
            )

        p.set(line, "attestation_certifier", certifier)
        p.set(line, "_write_atomic", ph.timed("pending record (atomic write)", line._write_atomic))
        p.set(sd, "put_key", ph.timed("PUT KEY (ISD keys replaced)", sd.put_key))
        p.set(sd, "set_card_life_cycle", ph.timed("SET STATUS (SECURED)", sd.set_card_life_cycle))
        p.set(line._Line, "isd_keys", ph.timed("ISD key diversification", line._Line.isd_keys))
        p.set(
            line._Line,
            "entry",
            ph.timed("journal entry (identity key prediction)", line._Line.entry),
        )
        p.set(line, "_append", ph.timed("journal append", line._append))
        for name in ("build_manifest", "write_signed_manifest"):
            p.set(line, name, ph.timed("manifest (build, sign, write)", getattr(line, name)))
        ph.per_batch.add("manifest (build, sign, write)")
        yield
    finally:
        p.undo()


# -- 3. the timed line, with the bound sampled between cards ------------------------------------
@dataclass
class LineRun:
    """One ``personalise_batch``: per-card line times and the raw-crypto samples taken between
    cards (their time is not line time: it is subtracted)."""

    count: int
    wall: float = 0.0
    setup: float = 0.0  # call to first progress report: store unlock, journal, plan
    finish: float = 0.0  # last card to return: manifest build, signature, record step
    card_times: list[float] = field(default_factory=list)
    bound_samples: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Line time: the wall time minus the bound samples."""
        return self.wall - sum(self.bound_samples)

    @property
    def per_card(self) -> float:
        return self.seconds / self.count


def time_line(
    directory: Path,
    count: int,
    out: Path,
    *,
    durable: bool,
    mix: Callable[[], None] | None,
    every: int,
) -> LineRun:
    """Personalise ``count`` cards; with ``mix``, replay one card's raw crypto after every
    ``every``-th card and pair it with the mean line time of those cards (its ratio sample)."""
    run = LineRun(count)
    clock = time.perf_counter
    window: list[float] = []
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = clock()
        if done == 0:
            run.setup = now - start
        else:
            run.card_times.append(now - last[0])
            window.append(now - last[0])
        if mix is not None and done and (done % every == 0 or done == total):
            t0 = clock()
            mix()
            sample = clock() - t0
            run.bound_samples.append(sample)
            run.ratios.append(sample / statistics.mean(window))
            window.clear()
        last[0] = clock()

    start = clock()
    result = line.personalise_batch(
        directory, BATCH, count, out, durable=durable, progress=progress
    )
    end = clock()
    run.wall, run.finish = end - start, end - last[0]
    if result.personalised != count or len(result.cards) != count:
        raise SystemExit(f"the line personalised {result.personalised} of {count} cards")
    if len({c.uid for c in result.cards}) != count:
        raise SystemExit("the line produced duplicate UIDs")
    return run


# -- 4. phases ------------------------------------------------------------------------------------
def phase_run(
    directory: Path, count: int, out: Path, durable: bool
) -> tuple[Phases, Phases, LineRun]:
    """The line with phase timers (exclusive) and cross-cutting timers (card OS, NVM writes)."""
    ph, cross = Phases(), Phases()
    p = Patcher()
    process, write_image = Card.process, Nvm._write_image
    p.set(Card, "process", cross.timed("card OS: Card.process (APDUs)", process))
    p.set(
        Nvm,
        "_write_image",
        cross.timed("card NVM: image writes (create, write, rename)", write_image),
    )
    try:
        with phase_wrappers(ph):
            run = time_line(directory, count, out, durable=durable, mix=None, every=1)
    finally:
        p.undo()
    return ph, cross, run


def profile_line(directory: Path, count: int, out: Path, durable: bool) -> None:
    prof = cProfile.Profile()
    prof.enable()
    line.personalise_batch(directory, BATCH, count, out, durable=durable)
    prof.disable()
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(30)
        console.print(f"[bold]cProfile of {count} cards, by {key}[/bold]")
        console.print(buf.getvalue(), markup=False)


# -- report -------------------------------------------------------------------------------------
def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f}"


def fmt_duration(seconds: float) -> str:
    return f"{seconds:,.0f} s ({seconds / 60:.2f} min)" if seconds >= 60 else f"{seconds:.2f} s"


def print_bound(census: Census, count: int, batch_raw: float) -> float:
    """The census table; returns the raw crypto seconds of one card (ops timed one by one)."""
    per_card = census.cards[0]
    t = new_table(
        "The bound: one card's cryptography (counted on 2 cards), each op replayed raw",
        [
            ("operation", "left"),
            ("per card", "right"),
            ("on the card", "right"),
            ("µs each", "right"),
            ("µs/card", "right"),
        ],
    )
    rows = []
    for op, n in per_card.items():
        rows.append((op, n, measure(describe_op(op), _raw_op(op), target_s=0.04, reps=3).per_op))
    rows.sort(key=lambda r: -r[1] * r[2])
    total = card_side = 0.0
    for op, n, each in rows:
        on_card = census.card_side.get(op, 0) // len(census.cards)
        total += n * each
        card_side += on_card * each
        t.add_row(
            describe_op(op), str(n), str(on_card), f"{each * 1e6:,.1f}", f"{n * each * 1e6:,.0f}"
        )
    t.add_row(
        "[bold]one card[/bold] (sum of the rows)",
        str(sum(per_card.values())),
        str(sum(census.card_side.values()) // len(census.cards)),
        "",
        f"{total * 1e6:,.0f}",
    )
    t.add_row("  of which on the card", "", "", "", f"{card_side * 1e6:,.0f}")
    for op, n in sorted(census.batch.items(), key=repr):
        t.add_row(f"per batch: {describe_op(op)}", str(n), "", "", "")
    t.add_row(
        f"per batch, replayed (÷ {count} cards)",
        "",
        "",
        f"{batch_raw * 1e6:,.0f}",
        f"{batch_raw / count * 1e6:,.1f}",
    )
    console.print(t)
    if census.unattributed:
        listed = ", ".join(f"{k} x{v}" for k, v in sorted(census.unattributed.items()))
        console.print(
            "[yellow]cryptography calls outside the counted ops (not in the bound): "
            f"{listed}[/yellow]"
        )
    else:
        console.print(
            "census check (sys.setprofile): no cryptography primitive ran outside the counted ops"
        )
    return card_side


def print_line(run: LineRun, batch_raw: float, label: str) -> tuple[float, float]:
    """The headline table; returns (ratio, projected seconds for GOAL_CARDS)."""
    raw_card = statistics.median(run.bound_samples) + batch_raw / run.count
    ratio = statistics.median(run.ratios)  # paired: each sample vs the cards just before it
    projected = run.per_card * GOAL_CARDS
    t = new_table(f"Factory line, one core: {label}", [("figure", "left"), ("value", "right")])
    t.add_row("cards personalised", f"{run.count:,}")
    t.add_row("line time (wall minus the bound samples)", fmt_duration(run.seconds))
    t.add_row("  set-up (store unlock, journal, plan)", f"{run.setup:,.3f} s")
    t.add_row("  manifest (build, sign, write, record)", f"{run.finish:,.3f} s")
    t.add_row("cards/s", f"{1 / run.per_card:,.1f}")
    t.add_row(
        "ms/card: mean (median, p95)",
        f"{fmt_ms(run.per_card)} ({fmt_ms(statistics.median(run.card_times))}, "
        f"{fmt_ms(_percentile(run.card_times, 0.95))})",
    )
    t.add_row(
        f"ms/card of raw crypto (median of {len(run.bound_samples)} samples)", fmt_ms(raw_card)
    )
    t.add_row(
        "[bold]ratio to the bound[/bold] (raw crypto ÷ line time; 1.0 = no overhead)",
        fmt_ratio(ratio),
    )
    t.add_row(
        f"projected {GOAL_CARDS:,} cards (mean ms/card x {GOAL_CARDS:,})", fmt_duration(projected)
    )
    if run.count >= GOAL_CARDS:
        t.add_row(f"measured: {run.count:,} cards", fmt_duration(run.seconds))
    goal = run.seconds if run.count >= GOAL_CARDS else projected
    t.add_row(
        f"goal: {GOAL_CARDS:,} cards in < {GOAL_S / 60:.0f} min",
        "met" if goal < GOAL_S else "NOT met",
    )
    t.add_row(f"{GOAL_CARDS:,} cards of raw crypto alone", fmt_duration(raw_card * GOAL_CARDS))
    console.print(t)
    return ratio, projected


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_phases(ph: Phases, cross: Phases, run: LineRun, card_crypto: float) -> None:
    t = new_table(
        f"Where a card's time goes ({run.count} cards, timers on; the phases are exclusive)",
        [("phase", "left"), ("calls/card", "right"), ("ms/card", "right"), ("share", "right")],
    )
    per_card = run.seconds / run.count
    covered = 0.0
    for label in ph.order:
        secs = ph.seconds[label] / run.count
        covered += secs
        name = f"{label} (per batch, ÷ N)" if label in ph.per_batch else label
        t.add_row(
            name,
            f"{ph.calls[label] / run.count:.2f}",
            fmt_ms(secs),
            f"{100 * secs / per_card:.1f}%",
        )
    t.add_row(
        "set-up (store unlock, journal, plan; per batch, ÷ N)",
        "",
        fmt_ms(run.setup / run.count),
        f"{100 * run.setup / run.count / per_card:.1f}%",
    )
    rest = per_card - covered - run.setup / run.count
    t.add_row(
        "line and routine glue (loop, connection, checks, pending unlink)",
        "",
        fmt_ms(rest),
        f"{100 * rest / per_card:.1f}%",
    )
    t.add_row("[bold]total[/bold]", "", fmt_ms(per_card), "100%")
    console.print(t)

    c = new_table(
        "Cross-cutting: the card emulator inside those phases (same run)",
        [("what", "left"), ("calls/card", "right"), ("ms/card", "right"), ("share", "right")],
    )
    card = cross.seconds["card OS: Card.process (APDUs)"] / run.count
    nvm = cross.seconds["card NVM: image writes (create, write, rename)"] / run.count
    rows = [
        ("card OS: Card.process (APDUs)", cross.calls["card OS: Card.process (APDUs)"], card),
        (
            "  of which NVM image writes (create, write, rename)",
            cross.calls["card NVM: image writes (create, write, rename)"],
            nvm,
        ),
        ("  of which card-side cryptography (raw replay)", None, card_crypto),
        (
            "  of which card OS glue (APDU parsing, SCP03 framing, applets, NVM encoding)",
            None,
            card - nvm - card_crypto,
        ),
        ("host side: routine, host stack, line, their crypto", None, per_card - card),
    ]
    for label, calls, secs in rows:
        c.add_row(
            label,
            "" if calls is None else f"{calls / run.count:.1f}",
            fmt_ms(secs),
            f"{100 * secs / per_card:.1f}%",
        )
    console.print(c)
    console.print(
        "Card creation's two image writes are outside Card.process: they are in the first phase "
        f"row. Timers cost a few µs per call: {fmt_ms(per_card)} ms/card with them."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=200, help="cards in the timed line run")
    parser.add_argument(
        "--bound-every",
        type=int,
        default=1,
        metavar="K",
        help="replay one card's raw crypto after every K-th card (paired samples)",
    )
    parser.add_argument("--no-phases", action="store_true", help="skip the per-phase run")
    parser.add_argument("--durable", action="store_true", help="fsync every card commit")
    parser.add_argument("--profile", type=int, default=0, metavar="K", help="cProfile K cards")
    parser.add_argument("--tmp", type=Path, default=None, help="where the temp dir goes")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()
    if args.count < 1 or args.bound_every < 1:
        raise SystemExit("--count and --bound-every must be at least 1")
    pinned = pin_one_core()
    tmp = Path(tempfile.mkdtemp(prefix="iotid-bench-factory-", dir=args.tmp))
    console.print(environment())
    console.print(f"{pinned}; cards under {tmp} ({filesystem_of(tmp)}), durable={args.durable}")
    try:
        run(tmp, args)
    finally:
        if args.keep:
            console.print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path, args: argparse.Namespace) -> None:
    directory = make_factory(tmp)
    census = run_census(directory, tmp / "out-census")
    if any(c != census.cards[0] for c in census.cards):
        raise SystemExit("the two census cards did not do the same cryptography")
    card_mix, batch_mix = _mix(census.cards[0]), _mix(census.batch)
    for _ in range(20):  # warm the replay up (first calls load OpenSSL algorithm objects)
        card_mix()
    batch_raw = measure("crypto per batch", batch_mix, target_s=0.05, reps=3).per_op
    card_crypto = print_bound(census, args.count, batch_raw)

    with console.status(f"personalising {args.count:,} cards ..."):
        main_run = time_line(
            directory,
            args.count,
            tmp / "out-line",
            durable=args.durable,
            mix=card_mix,
            every=args.bound_every,
        )
    every = "after every card" if args.bound_every == 1 else f"after every {args.bound_every} cards"
    ratio, projected = print_line(
        main_run, batch_raw, f"{args.count:,} p256 cards, bound replayed {every}"
    )
    if not args.no_phases:
        ph, cross, prun = phase_run(directory, args.count, tmp / "out-phases", args.durable)
        print_phases(ph, cross, prun, card_crypto)
    if args.profile:
        profile_line(directory, args.profile, tmp / "out-profile", args.durable)
    measured = main_run.seconds if args.count >= GOAL_CARDS else projected
    console.print(
        f"{args.count:,} cards: {1 / main_run.per_card:,.1f} cards/s, "
        f"{fmt_ms(main_run.per_card)} ms/card, "
        f"ratio to the raw cryptography {fmt_ratio(ratio)}; {GOAL_CARDS:,} cards "
        f"{'measured' if args.count >= GOAL_CARDS else 'projected'} {fmt_duration(measured)}: "
        f"goal {'met' if measured < GOAL_S else 'NOT met'}"
    )


if __name__ == "__main__":
    main()

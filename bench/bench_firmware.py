"""Benchmark: firmware verification throughput, host shim + card, in-process.

Scope: an MCUboot image signed by ``imgtool`` (ECDSA P-256, SHA-256) verified through the
bootloader API (:meth:`iotid.host.firmware.FirmwareSession.verify_image`: read a stream, BEGIN,
UPDATE per chunk, FINISH) over the loopback transport into the card (APDU parsing, the per-APDU
NVM transaction, the firmware applet's streaming verifier), with extended APDUs (65535-byte and
32 KiB UPDATEs) and with short APDUs (255-byte UPDATEs); plus the card alone (``card.process``
on pre-encoded UPDATEs, no host) and the verifier alone (``McubootVerifier.feed``, no APDUs).
Every row is a ratio to the bound measured in alternation with it: ``hashlib.sha256`` over the
same image bytes. **ratio = MB/s ÷ hashlib MB/s** (1.0 = as fast as hashing the image once).

A second table breaks one 64 KiB extended UPDATE into its costs, each timed on its own: hashing
64 KiB (``cryptography``), the card OS without hashing (``card.process`` on an UPDATE whose
session already failed, so the applet discards the data), two parts of it (``CommandApdu.parse``;
``card.card_life_cycle``, a registry record decoded on every APDU), and the host stack without
the card (``SmartCardProtocol.transmit`` over a connection that answers 9000 at once).
``--profile`` prints cProfile's top functions for one extended verification.

Not in scope: SCP03-wrapped UPDATEs (the bootloader talks plain to this applet), PC/SC, vpcd or
T=1 transports, disk reads (images are in memory), file-backed NVM (one commit at FINISH).

Run: ``.venv/bin/python bench/bench_firmware.py`` (about 20-40 s).
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import pstats
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from _util import (
    Measurement,
    calibrate,
    console,
    environment,
    fmt_ratio,
    fmt_us,
    measure,
    measure_interleaved,
    new_table,
    summarize,
)
from iotid.apdu import CommandApdu
from iotid.crypto.mcuboot import McubootVerifier, TrustedKey
from iotid.host import SecurityDomainSession, SmartCardProtocol
from iotid.host.firmware import FirmwareSession, perso_dgis
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.firmware import FirmwareApplet
from iotid.spec import firmware as spec
from iotid.spec.firmware import Ins, Mode
from iotid.spec.identity import CLA_IOTID
from iotid.spec.iso7816 import EXTENDED_MAX_DATA, SHORT_MAX_DATA
from iotid.transport.base import Connection
from iotid.transport.loopback import LoopbackConnection

IMGTOOL = Path(sys.executable).with_name("imgtool")
UID = bytes(10)
MIB = 1024 * 1024


def signed_image(workdir: Path, key_pem: Path, size: int, name: str) -> bytes:
    """``imgtool sign`` over ``size`` bytes of pseudo-random firmware."""
    src, out = workdir / f"{name}.in", workdir / f"{name}.bin"
    src.write_bytes(hashlib.shake_256(name.encode()).digest(size))
    cmd = [
        str(IMGTOOL), "sign", "--key", str(key_pem), "--header-size", "0x200", "--align", "8",
        "--version", "1.2.3", "--slot-size", hex(2 * size + 0x10000), "--pad-header",
        "--security-counter", "1", str(src), str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)  # noqa: S603
    return out.read_bytes()


def personalised_card(key: ec.EllipticCurvePrivateKey) -> Card:
    card = Card.create(None, uid=UID, applets=[FirmwareApplet])
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(spec.AID)
    sd.store_data(perso_dgis([key.public_key()], 0))
    return card


class NullConnection(Connection):
    """Answers 9000 to everything: the host stack's cost without a card."""

    @property
    def atr(self) -> bytes:
        return b"\x3b\x00"

    def transmit(self, apdu: bytes) -> bytes:
        return b"\x90\x00"

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Row:
    label: str
    image_bytes: int
    apdus: int
    subject: Measurement
    bound: Measurement
    ratio: float


def paired(
    label: str, image: bytes, apdus: int, fn: Callable[[], object], target: float, reps: int
) -> Row:
    def bound() -> object:
        return hashlib.sha256(image).digest()

    batches = (calibrate(fn, target_s=target), calibrate(bound, target_s=target))
    s, b = measure_interleaved([(fn, batches[0]), (bound, batches[1])], reps=reps)
    ratio = statistics.median(bi / si for si, bi in zip(s, b, strict=True))
    return Row(
        label,
        len(image),
        apdus,
        summarize(label, s, batches[0]),
        summarize("hashlib", b, batches[1]),
        ratio,
    )


def run(workdir: Path, target: float, reps: int, large: int, small: int, profile: bool) -> None:
    console.print(environment())
    key_pem = workdir / "key.pem"
    keygen = [str(IMGTOOL), "keygen", "-k", str(key_pem), "-t", "ecdsa-p256"]
    subprocess.run(keygen, check=True, timeout=60)  # noqa: S603 - the venv's imgtool
    key = serialization.load_pem_private_key(key_pem.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    big = signed_image(workdir, key_pem, large, "large")
    little = signed_image(workdir, key_pem, small, "small")
    card = personalised_card(key)
    console.print(
        f"images: {len(big):,} bytes (extended rows) and {len(little):,} bytes (short rows), "
        "imgtool ECDSA P-256 / SHA-256; in-memory NVM"
    )

    def bootloader(extended: bool, image: bytes, chunk: int) -> Callable[[], object]:
        session = FirmwareSession(SmartCardProtocol(LoopbackConnection(card), extended=extended))

        def verify() -> object:
            verdict = session.verify_image(io.BytesIO(image), chunk=chunk)
            if not verdict.valid:
                raise SystemExit(f"verification failed: {verdict.reason}")
            return verdict

        verify()
        return verify

    def card_alone(image: bytes, chunk: int) -> tuple[Callable[[], object], int]:
        conn = LoopbackConnection(card)
        SmartCardProtocol(conn).select(spec.AID)
        begin = CommandApdu(CLA_IOTID, Ins.BEGIN, Mode.MCUBOOT, 0).encode()
        finish = CommandApdu(CLA_IOTID, Ins.FINISH, 0, 0).encode()
        updates = [
            CommandApdu(CLA_IOTID, Ins.UPDATE, 0, 0, image[i : i + chunk], extended=True).encode()
            for i in range(0, len(image), chunk)
        ]

        def go() -> object:
            card.process(begin)
            for apdu in updates:
                card.process(apdu)
            answer = card.process(finish)
            if answer[:3] != b"\x90\x01\x5a":
                raise SystemExit("card-alone verification failed")
            return answer

        go()
        return go, len(updates)

    def verifier_alone(image: bytes, chunk: int) -> Callable[[], object]:
        trusted = [TrustedKey(key.public_key())]

        view = memoryview(image)  # no copies: the verifier's own cost

        def go() -> object:
            v = McubootVerifier(trusted)
            for i in range(0, len(image), chunk):
                v.feed(view[i : i + chunk])
            return v.finish(0)

        return go

    alone, n_alone = card_alone(big, EXTENDED_MAX_DATA)
    ext, ext32 = bootloader(True, big, EXTENDED_MAX_DATA), bootloader(True, big, 32768)
    short = bootloader(False, little, SHORT_MAX_DATA)
    plan: list[tuple[str, bytes, int, Callable[[], object]]] = [
        ("verifier alone, 64 KiB feeds", big, 0, verifier_alone(big, EXTENDED_MAX_DATA)),
        ("card alone, extended 65535 B", big, n_alone, alone),
        ("host+card, extended 65535 B", big, -(-len(big) // EXTENDED_MAX_DATA), ext),
        ("host+card, extended 32 KiB", big, -(-len(big) // 32768), ext32),
        ("host+card, short 255 B", little, -(-len(little) // SHORT_MAX_DATA), short),
    ]
    rows = [paired(label, img, n, fn, target, reps) for label, img, n, fn in plan]
    print_rows(rows)
    breakdown(card, big, target, reps)
    if profile:
        fn = bootloader(True, big, EXTENDED_MAX_DATA)
        prof = cProfile.Profile()
        prof.runcall(lambda: [fn() for _ in range(5)])
        console.print(
            "cProfile, 5 extended verifications (tottime; the profiler inflates Python calls):"
        )
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)


def print_rows(rows: list[Row]) -> None:
    table = new_table(
        "Firmware verification throughput (ratio = MB/s ÷ hashlib.sha256 MB/s, same bytes)",
        [
            ("path", "left"),
            ("image", "right"),
            ("APDUs", "right"),
            ("MB/s", "right"),
            ("hashlib MB/s", "right"),
            ("ratio", "right"),
            ("µs/APDU", "right"),
            ("spread", "right"),
        ],
    )
    for r in rows:
        per_apdu = "-" if not r.apdus else fmt_us(r.subject.per_op / r.apdus)
        table.add_row(
            r.label,
            f"{r.image_bytes / MIB:.2f} MiB",
            f"{r.apdus:,}" if r.apdus else "-",
            f"{r.image_bytes / r.subject.per_op / 1e6:,.0f}",
            f"{r.image_bytes / r.bound.per_op / 1e6:,.0f}",
            fmt_ratio(r.ratio),
            per_apdu,
            f"{r.subject.spread:.0%}",
        )
    console.print(table)


def breakdown(card: Card, image: bytes, target: float, reps: int) -> None:
    """What one 64 KiB extended UPDATE costs, part by part."""
    chunk = image[:EXTENDED_MAX_DATA]
    apdu = CommandApdu(CLA_IOTID, Ins.UPDATE, 0, 0, chunk, extended=True).encode()
    conn = LoopbackConnection(card)
    SmartCardProtocol(conn).select(spec.AID)
    conn.transmit(CommandApdu(CLA_IOTID, Ins.BEGIN, Mode.MCUBOOT, 0).encode())
    conn.transmit(CommandApdu(CLA_IOTID, Ins.UPDATE, 0, 0, b"\x00" * 32).encode())  # bad magic
    hasher = hashes.Hash(hashes.SHA256())
    host = SmartCardProtocol(NullConnection(), extended=True)

    def host_only() -> object:
        return host.transmit(CLA_IOTID, Ins.UPDATE, 0, 0, chunk)

    parts: list[tuple[str, Callable[[], object]]] = [
        ("hash 64 KiB (cryptography SHA-256)", lambda: hasher.update(chunk)),
        ("card OS + applet, no hashing (card.process)", lambda: card.process(apdu)),
        ("  of which CommandApdu.parse (2 copies of 64 KiB)", lambda: CommandApdu.parse(apdu)),
        ("  of which card.card_life_cycle (registry decode)", lambda: card.card_life_cycle),
        ("host stack, no card (protocol.transmit)", host_only),
        ("read 64 KiB from BytesIO", lambda: io.BytesIO(image).read(EXTENDED_MAX_DATA)),
    ]
    table = new_table(
        "One extended UPDATE (65535 bytes), part by part", [("part", "left"), ("µs", "right")]
    )
    for label, fn in parts:
        table.add_row(label, fmt_us(measure(label, fn, target_s=target / 3, reps=reps).per_op))
    console.print(table)
    console.print(
        "The bound hashes 64 KiB in the first row's time; a ratio of 0.5 allows one more such "
        "time per APDU for everything else (card OS, applet, host stack, copies)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", type=float, default=0.3, help="seconds per timed batch")
    parser.add_argument(
        "--reps", type=int, default=5, help="timed batches per figure (median kept)"
    )
    parser.add_argument("--size", type=float, default=4, help="MiB of the extended-row image")
    parser.add_argument("--short-size", type=float, default=0.5, help="MiB of the short-row image")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iotid-bench-fw-", dir="/tmp") as tmp:
        run(
            Path(tmp),
            args.target,
            args.reps,
            int(args.size * MIB),
            int(args.short_size * MIB),
            args.profile,
        )


if __name__ == "__main__":
    main()

"""Benchmark: APDUs through T=1 over the simulated I2C bus at 0, 1, 5 and 20 % frame faults.

Scope: the host's ``RetryingConnection`` over ``T1Connection`` over an ``I2CLink`` (400 kbit/s,
BWT 1 s virtual, IFSC 32 from the card's ATR, IFSD 254, LRC) to a ``T1CardEndpoint`` serving the
card emulator, for two APDUs: GET DATA CPLC (``80 CA 9F 7F``, a 45-byte answer, one I-block
each way) to the card emulator, and a 255-byte command answered with 257 bytes by an echo card
(a bytes-only ``CardLike``: chains of 9 I-blocks to the card at IFSC 32 and 2 back at IFSD 254;
the ISD has no plain command that long). Both are re-sendable reads for ``RetryingConnection``.
Faults are split evenly between flipped bits, dropped, truncated and delayed frames, both ways,
seeded. For the echo card the bound is little more than a function call, so its ratio is the
cost of the T=1 stack itself.

Printed per fault rate and APDU: the success rate (right answer; the rest failed safe with
``TransportError``), mean T=1 blocks re-sent per APDU, whole-APDU retries per APDU, frames and
virtual bus time per APDU (simulated seconds: transfer time plus every BWT waited out, which is
what a device would feel), and wall-clock APDU/s as a ratio to the same APDU through
``LoopbackConnection`` to the same kind of card, timed in alternation with it (the bound: no
bus, no T=1). The wall-clock ratio measures this Python implementation; the virtual time
measures the protocol.

Not in scope: secure messaging (``bench_apdu.py``; a fault after delivery ends an SCP03 session,
which would measure session set-up), real I2C timing, PC/SC.

Run: ``.venv/bin/python bench/bench_bus.py`` (about 20 s).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from _util import (
    Paired,
    calibrate,
    console,
    environment,
    fmt_rate,
    fmt_ratio,
    fmt_us,
    measure_paired,
    new_table,
)
from iotid.host.resilience import RetryingConnection
from iotid.se import Card
from iotid.spec.gp import DataTag, GpIns
from iotid.transport.base import CardLike, TransportError
from iotid.transport.i2c import FaultConfig, I2CLink
from iotid.transport.loopback import LoopbackConnection
from iotid.transport.t1 import T1CardEndpoint, T1Connection, T1TransportError

RATES = (0.0, 0.01, 0.05, 0.20)
UID = bytes(10)
SEED = 2024
GET_CPLC = bytes([0x80, GpIns.GET_DATA, DataTag.CPLC >> 8, DataTag.CPLC & 0xFF, 0x00])
#: A GET DATA-shaped command with 255 bytes of data (re-sendable by the default predicate).
LONG = bytes([0x80, GpIns.GET_DATA, 0x00, 0x00, 0xFF]) + bytes(range(255)) + b"\x00"


class EchoCard:
    """A bytes-only card answering every APDU's data back with 9000."""

    atr = Card.create(None, uid=UID).atr

    def process(self, apdu: bytes) -> bytes:
        return apdu[5:-1] + b"\x90\x00"

    def power_on(self) -> bytes:
        return self.atr

    reset = power_on

    def power_off(self) -> None:
        pass


def emulator() -> CardLike:
    return Card.create(None, uid=UID)


APDUS = (
    ("CPLC (card)", GET_CPLC, emulator),
    ("255/257 B (echo)", LONG, EchoCard),
)


@dataclass
class BusRun:
    """One card behind T=1 on a link with ``rate`` faults; counts what its APDUs cost."""

    rate: float
    apdu: bytes
    expected: bytes
    card: CardLike
    link: I2CLink = field(init=False)
    t1: T1Connection = field(init=False)
    conn: RetryingConnection = field(init=False)
    apdus: int = 0
    right: int = 0
    failed_safe: int = 0
    wrong: int = 0

    def __post_init__(self) -> None:
        self.link = I2CLink(faults=FaultConfig.uniform(self.rate), seed=SEED)
        T1CardEndpoint(self.card, self.link)
        self.t1 = T1Connection(self.link)
        self.conn = RetryingConnection(self.t1, sleep=self.link.clock.advance)

    def __call__(self) -> None:
        self.apdus += 1
        try:
            answer = self.conn.transmit(self.apdu)
        except TransportError as exc:
            self.failed_safe += 1
            if isinstance(exc, T1TransportError) and exc.broken:
                self.t1.reset()
            return
        if answer == self.expected:
            self.right += 1
        else:
            self.wrong += 1

    def per_apdu(self, total: float) -> float:
        return total / max(1, self.apdus)


@dataclass(frozen=True)
class Row:
    label: str
    run: BusRun
    paired: Paired


def check_wire() -> dict[bytes, bytes]:
    """The answers every run must reproduce, and proof that both APDUs really succeed."""
    expected = {}
    for label, apdu, make in APDUS:
        answer = LoopbackConnection(make()).transmit(apdu)
        if answer[-2:] != b"\x90\x00":
            raise SystemExit(f"{label}: the card answered {answer[-2:].hex()}")
        clean = BusRun(0.0, apdu, answer, make())
        clean()
        if clean.right != 1:
            raise SystemExit(f"{label}: T=1 on a clean bus did not return the loopback answer")
        expected[apdu] = answer
    if clean.t1.stats.blocks_sent < 9:
        raise SystemExit("the long APDU must travel as a chain of I-blocks (IFSC 32)")
    return expected


def run(target_s: float, reps: int) -> None:
    console.print(environment())
    expected = check_wire()
    rows: list[Row] = []
    for label, apdu, make in APDUS:
        loop = LoopbackConnection(make())

        def bound(loop: LoopbackConnection = loop, apdu: bytes = apdu) -> bytes:
            return loop.transmit(apdu)

        bound_batch = calibrate(bound, target_s=target_s)
        for rate in RATES:
            bus = BusRun(rate, apdu, expected[apdu], make())
            paired = measure_paired(label, bus, bound, bound_batch, target_s=target_s, reps=reps)
            rows.append(Row(label, bus, paired))

    table = new_table(
        "APDUs through T=1 over a faulty I2C bus (ratio = APDU/s ÷ loopback APDU/s, same APDU)",
        [
            ("APDU", "left"),
            ("faults", "right"),
            ("APDUs", "right"),
            ("right", "right"),
            ("failed safe", "right"),
            ("wrong", "right"),
            ("re-sent blocks", "right"),
            ("APDU retries", "right"),
            ("frames", "right"),
            ("virtual ms", "right"),
            ("APDU/s", "right"),
            ("ratio", "right"),
        ],
    )
    for r in rows:
        b, m = r.run, r.paired.subject
        table.add_row(
            r.label,
            f"{b.rate:.0%}",
            f"{b.apdus:,}",
            f"{b.right / b.apdus:.2%}",
            f"{b.failed_safe:,}",
            f"{b.wrong}",
            f"{b.per_apdu(b.t1.stats.retransmissions):.3f}",
            f"{b.per_apdu(b.conn.stats.retries):.4f}",
            f"{b.per_apdu(b.link.counters.frames):.2f}",
            f"{b.per_apdu(b.link.clock.now) * 1000:.2f}",
            fmt_rate(m.ops_per_s),
            fmt_ratio(r.paired.ratio),
        )
    console.print(table)
    console.print(
        "Per APDU: blocks T=1 re-sent, whole-APDU retries, frames on the bus, virtual bus time "
        "(transfer + BWT waits). ratio = APDU/s through T=1 ÷ APDU/s through the loopback."
    )
    for label, _, _ in APDUS:
        same = [r for r in rows if r.label == label]
        clean = same[0].run.per_apdu(same[0].run.link.clock.now)
        lb = same[0].paired.bound
        console.print(
            f"{label}: loopback bound {fmt_rate(lb.ops_per_s)} APDU/s ({fmt_us(lb.per_op)} µs)"
        )
        for r in same:
            b = r.run
            console.print(
                f"  {b.rate:>4.0%} faults: {b.right / b.apdus:.2%} right, "
                f"{b.failed_safe / b.apdus:.2%} failed safe, {b.wrong} wrong; "
                f"virtual time x{b.per_apdu(b.link.clock.now) / clean:.1f} the clean bus; "
                f"wall-clock ratio {fmt_ratio(r.paired.ratio)}"
            )
    if any(r.run.wrong for r in rows):
        raise SystemExit("a WRONG answer came back: the fail-safe guarantee is broken")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target", type=float, default=0.1, help="seconds per timed batch")
    parser.add_argument(
        "--reps", type=int, default=5, help="timed batches per figure (median kept)"
    )
    args = parser.parse_args()
    run(args.target, args.reps)


if __name__ == "__main__":
    main()

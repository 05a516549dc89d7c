"""Benchmark: APDUs per second in-process, host shim + card emulator through the loopback.

Scope: plain GET DATA CPLC (no session) and, for each SCP03 security level (01, 03, 11, 13, 33),
a wrapped GET DATA CPLC (42-byte answer) and a wrapped GET STATUS carrying 200 bytes of command
data (``80 F2 80 02``, the AID search criterion ``4F 08 <ISD AID>`` twenty times; read-only),
each with short and with extended APDUs; plus the card alone (``card.process`` on a plain GET
DATA). Every rate is printed as a ratio to a bound timed in alternation with it: the rate of one
"raw crypto op" done directly with ``cryptography`` (one AES-CMAC over 64 bytes + one AES-CBC
encryption of 48 bytes + one AES block encryption), the cryptography one side of a level-33
APDU needs. Both sides do it, so a ratio near 0.5 would mean the stack adds nothing.

Not in scope: PC/SC, vpcd or T=1 transports (bus and process boundaries), state-changing
commands and their NVM commits (``bench_nvm.py``), session set-up cost (INITIALIZE UPDATE and
EXTERNAL AUTHENTICATE are done once per level, outside the timed loop).

Run: ``.venv/bin/python bench/bench_apdu.py`` (25-35 s).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from _util import (
    Paired,
    calibrate,
    console,
    environment,
    fmt_rate,
    fmt_ratio,
    fmt_us,
    measure,
    measure_paired,
    median_of,
    new_table,
)
from iotid.host import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.spec import gp
from iotid.spec.gp import DataTag, GpIns
from iotid.transport.loopback import LoopbackConnection

LEVELS = (0x01, 0x03, 0x11, 0x13, 0x33)
UID = bytes(10)
#: GET STATUS search criterion (GPC 2.3.1 §11.4.2.1): 4F 08 <ISD AID>, repeated to 200 bytes.
STATUS_DATA = (bytes([gp.TAG_AID, len(gp.ISD_AID)]) + gp.ISD_AID) * 20
CARD_ONLY_APDU = bytes.fromhex("80CA9F7F00")  # GET DATA CPLC, CLA 80: the tagged object

# The bound's inputs: sizes of what one side of a level-33 GET DATA CPLC handles.
_KEY = bytes(range(0x40, 0x50))
_MAC_INPUT = bytes(64)  # MAC chaining value + response (48) + SW, rounded
_CBC_INPUT = bytes(48)  # 42-byte CPLC padded (ISO 9797-1 method 2)
_IV = bytes(16)
_BLOCK = bytes(16)


def raw_crypto_op() -> bytes:
    """One AES-CMAC over 64 bytes, one AES-CBC encryption of 48 bytes, one AES block."""
    mac = CMAC(algorithms.AES(_KEY))
    mac.update(_MAC_INPUT)
    tag = mac.finalize()
    enc = Cipher(algorithms.AES(_KEY), modes.CBC(_IV)).encryptor()
    ct = enc.update(_CBC_INPUT) + enc.finalize()
    # A single block: the raw block cipher (SCP03 ICV), not a mode over a message.
    blk = Cipher(algorithms.AES(_KEY), modes.ECB()).encryptor()  # noqa: S305
    return tag + ct + blk.update(_BLOCK) + blk.finalize()


def _cmac(data: bytes) -> bytes:
    mac = CMAC(algorithms.AES(_KEY))
    mac.update(data)
    return mac.finalize()


def _cbc(data: bytes, *, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(_KEY), modes.CBC(_IV))
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def _block() -> bytes:
    enc = Cipher(algorithms.AES(_KEY), modes.ECB()).encryptor()  # noqa: S305
    return enc.update(_BLOCK) + enc.finalize()


def level33_crypto_replica() -> bytes:
    """Exactly the primitives a level-33 GET DATA CPLC costs on both sides (Amd D §6.2.4-6.2.7):
    host C-MAC (22 bytes), card C-MAC check, card ICV + CBC(48) + R-MAC (66 bytes), host R-MAC
    check, ICV and CBC decryption."""
    out = _cmac(bytes(22)) + _cmac(bytes(22))
    out += _block() + _cbc(_CBC_INPUT, encrypt=True) + _cmac(bytes(66))
    out += _cmac(bytes(66)) + _block() + _cbc(_CBC_INPUT, encrypt=False)
    return out


class RecordingConnection:
    """Loopback that remembers the last command APDU (used only by the wire-format check)."""

    def __init__(self, card: Card) -> None:
        self.inner = LoopbackConnection(card)
        self.last = b""

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def transmit(self, apdu: bytes) -> bytes:
        self.last = apdu
        return self.inner.transmit(apdu)

    def close(self) -> None:
        self.inner.close()


def _is_extended(apdu: bytes) -> bool:
    # ISO 7816-4 §5.1: after the header, a first body byte 00 followed by more bytes is extended.
    return len(apdu) >= 7 and apdu[4] == 0x00


def check_wire() -> None:
    """The timed sessions must really send what their row says (encoding, answers)."""
    for extended in (False, True):
        conn = RecordingConnection(Card.create(None, uid=UID))
        sd = SecurityDomainSession(conn, extended=extended)
        if len(sd.get_data(DataTag.CPLC)) != 42:
            raise SystemExit("plain GET DATA CPLC did not answer 42 bytes")
        for level in LEVELS:
            sd.authenticate(StaticKeys.gp_test_keys(), level=level)
            if len(sd.get_data(DataTag.CPLC)) != 42:
                raise SystemExit(f"level {level:02x}: GET DATA CPLC did not answer 42 bytes")
            if _is_extended(conn.last) != extended:
                raise SystemExit(f"level {level:02x}: GET DATA was not sent as {extended=}")
            answer = sd.protocol.transmit(0x80, GpIns.GET_STATUS, 0x80, 0x02, STATUS_DATA, 256)
            if gp.ISD_AID not in answer:
                raise SystemExit(f"level {level:02x}: GET STATUS did not list the ISD")
            if _is_extended(conn.last) != extended:
                raise SystemExit(f"level {level:02x}: GET STATUS was not sent as {extended=}")
    card = Card.create(None, uid=UID)
    if card.process(CARD_ONLY_APDU)[-2:] != b"\x90\x00":
        raise SystemExit("card-only GET DATA did not answer 9000")


@dataclass(frozen=True)
class Row:
    label: str
    level: str
    mode: str
    p: Paired


def run(target_s: float, reps: int) -> None:
    console.print(environment())
    check_wire()
    bound_batch = calibrate(raw_crypto_op, target_s=target_s)
    bound_before = measure("raw crypto op", raw_crypto_op, target_s=target_s, reps=reps)

    def timed(fn: Callable[[], object]) -> Paired:
        return measure_paired("", fn, raw_crypto_op, bound_batch, target_s=target_s, reps=reps)

    rows: list[Row] = []
    card = Card.create(None, uid=UID)
    rows.append(
        Row("card alone: GET DATA", "-", "short", timed(partial(card.process, CARD_ONLY_APDU)))
    )
    for extended in (False, True):
        mode = "extended" if extended else "short"
        conn = LoopbackConnection(Card.create(None, uid=UID))
        sd = SecurityDomainSession(conn, extended=extended)
        rows.append(Row("GET DATA CPLC", "plain", mode, timed(partial(sd.get_data, DataTag.CPLC))))
        for level in LEVELS:
            sd.authenticate(StaticKeys.gp_test_keys(), level=level)
            lvl = f"{level:02X}"
            get = partial(sd.get_data, DataTag.CPLC)
            rows.append(Row("GET DATA CPLC", lvl, mode, timed(get)))
            status = partial(
                sd.protocol.transmit, 0x80, GpIns.GET_STATUS, 0x80, 0x02, STATUS_DATA, 256
            )
            rows.append(Row("GET STATUS, 200 B data", lvl, mode, timed(status)))
    replica = timed(level33_crypto_replica)
    bound_after = measure("raw crypto op", raw_crypto_op, target_s=target_s, reps=reps)
    paired_bounds = [r.p.bound for r in rows]
    bound = median_of("raw crypto op", [bound_before, bound_after, *paired_bounds])

    bt = new_table(
        "Bound (measured in this run)", [("operation", "left"), ("ops/s", "right"), ("µs", "right")]
    )
    bt.add_row(
        "raw crypto op: CMAC(64 B) + CBC-enc(48 B) + AES block",
        fmt_rate(bound.ops_per_s),
        fmt_us(bound.per_op),
    )
    bt.add_row("  before the rows", fmt_rate(bound_before.ops_per_s), fmt_us(bound_before.per_op))
    bt.add_row("  after the rows", fmt_rate(bound_after.ops_per_s), fmt_us(bound_after.per_op))
    slowest = max(paired_bounds, key=lambda m: m.per_op)
    fastest = min(paired_bounds, key=lambda m: m.per_op)
    bt.add_row(
        "  beside the rows (fastest .. slowest)",
        f"{fmt_rate(fastest.ops_per_s)} .. {fmt_rate(slowest.ops_per_s)}",
        f"{fmt_us(fastest.per_op)} .. {fmt_us(slowest.per_op)}",
    )
    bt.add_row(
        "level-33 GET DATA crypto, both sides (4 CMAC, 2 CBC, 2 blocks)",
        fmt_rate(replica.subject.ops_per_s),
        fmt_us(replica.subject.per_op),
    )
    console.print(bt)

    table = new_table(
        "APDUs per second, in-process loopback (ratio = APDU/s ÷ raw-crypto-ops/s)",
        [
            ("command", "left"),
            ("level", "center"),
            ("APDU", "left"),
            ("APDU/s", "right"),
            ("µs/APDU", "right"),
            ("spread", "right"),
            ("ratio", "right"),
        ],
    )
    for r in rows:
        m = r.p.subject
        spread = f"{100 * m.spread:.0f}%"
        table.add_row(
            r.label,
            r.level,
            r.mode,
            fmt_rate(m.ops_per_s),
            fmt_us(m.per_op),
            spread,
            fmt_ratio(r.p.ratio),
        )
    console.print(table)
    console.print(
        "Each ratio is the median over repetitions of (APDU batch rate ÷ rate of the raw-op batch "
        "timed right after it). Ratio 0.5 = zero overhead (host and card each do one raw op); "
        f"the exact crypto of a level-33 GET DATA on both sides alone gives {replica.ratio:.3f}."
    )
    for r in rows:
        where = "no session" if r.level in ("-", "plain") else f"level {r.level}"
        rate, us = fmt_rate(r.p.subject.ops_per_s), fmt_us(r.p.subject.per_op)
        console.print(
            f"{r.label}, {where}, {r.mode}: {rate} APDU/s ({us} µs), ratio {fmt_ratio(r.p.ratio)}: "
            f"one APDU costs the time of {1 / r.p.ratio:.1f} raw crypto ops"
        )


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

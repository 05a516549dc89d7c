"""A simulated I2C link between a host MCU and a secure element, with injectable faults.

Scope: two ports (``link.host``, ``link.card``) carrying whole frames in order; a virtual clock
(no test sleeps for real) advanced by the transfer time of each frame at ``bitrate`` (9 bits a
byte: 8 data bits and the ACK) and by the reader's waits; per-frame faults drawn from a seeded
``random.Random`` with configurable probabilities (flipped bits, dropped frames, truncated
frames, delayed frames) or forced on the next frames (deterministic tests), with counters of
what was injected; the out-of-band power and reset lines of the card (GPIOs on a real board,
so never faulty; the ATR comes back through them, as an I2C SE's vendor "get ATR" would).

Single-threaded and deterministic: the card side is a ``CardSide`` object attached to the link;
when the host waits for a frame and the card has input, the link steps the card. A frame whose
arrival time is later than the reader's deadline is discarded when the reader gives up: a delay
beyond the reader's timeout behaves like a drop (the bus master no longer polls for it), and no
stale frame is ever read later. That matches T=1's half-duplex discipline.

Not in scope: I2C addressing, clock stretching, arbitration; what the frames mean (``t1``).
Nothing here is cryptographic: fault injection randomness need not be unpredictable.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Protocol

__all__ = [
    "CardSide",
    "Fault",
    "FaultConfig",
    "FaultCounters",
    "I2CLink",
    "I2CPort",
    "VirtualClock",
]

#: Bits on the wire per byte: 8 data bits and the ACK bit (I2C-bus specification UM10204 §3.1.6).
_BITS_PER_BYTE = 9
#: Per-frame overhead: START, the address byte with its ACK, STOP (counted as one byte more).
_FRAME_OVERHEAD_BYTES = 1


class Fault(Enum):
    """The faults one frame can suffer (at most one per frame)."""

    FLIP = "flip"
    DROP = "drop"
    TRUNCATE = "truncate"
    DELAY = "delay"


@dataclass(frozen=True)
class FaultConfig:
    """Probabilities per frame of each fault; their sum is the frame fault rate (at most 1).

    ``flip_bits`` bits are flipped in a flipped frame (distinct positions); ``delay_range`` is the
    uniform range, in virtual seconds, of an injected delay (compare it with the reader's timeout).
    """

    flip: float = 0.0
    drop: float = 0.0
    truncate: float = 0.0
    delay: float = 0.0
    flip_bits: int = 1
    delay_range: tuple[float, float] = (0.1, 3.0)

    def __post_init__(self) -> None:
        probs = (self.flip, self.drop, self.truncate, self.delay)
        if any(p < 0 for p in probs) or sum(probs) > 1.0 + 1e-12:
            raise ValueError("fault probabilities must be >= 0 and sum to at most 1")
        if self.flip_bits < 1:
            raise ValueError("flip_bits must be at least 1")
        lo, hi = self.delay_range
        if lo < 0 or hi < lo:
            raise ValueError("delay_range must be 0 <= low <= high")

    @classmethod
    def uniform(cls, rate: float, **kwargs: object) -> FaultConfig:
        """``rate`` of the frames faulty, split evenly between the four kinds of fault."""
        share = rate / 4
        return cls(share, share, share, share, **kwargs)  # type: ignore[arg-type]

    @property
    def rate(self) -> float:
        return self.flip + self.drop + self.truncate + self.delay


@dataclass
class FaultCounters:
    """What one direction of the link carried and what was injected into it."""

    frames: int = 0
    bytes: int = 0
    flipped: int = 0
    dropped: int = 0
    truncated: int = 0
    delayed: int = 0
    late: int = 0  # frames discarded because they arrived after the reader's deadline

    @property
    def injected(self) -> int:
        return self.flipped + self.dropped + self.truncated + self.delayed

    def __add__(self, other: FaultCounters) -> FaultCounters:
        return FaultCounters(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )


class VirtualClock:
    """Simulated seconds. Only the bus and the host's waits move it; nothing sleeps."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self.now += seconds

    def advance_to(self, instant: float) -> None:
        self.now = max(self.now, instant)

    def __repr__(self) -> str:
        return f"VirtualClock({self.now:.6f})"


class CardSide(Protocol):
    """What sits at the card end of the link: a stepped frame handler plus the power lines."""

    def step(self) -> bool:
        """Handle one frame waiting at the card port, if any; True if one was handled."""
        ...

    def power_on(self) -> bytes: ...

    def reset(self) -> bytes: ...

    def power_off(self) -> None: ...


@dataclass
class _Frame:
    data: bytes
    arrival: float


@dataclass
class I2CPort:
    """One end of the link. ``write`` sends to the other end; ``counters`` count what this port
    wrote and what was injected into it; ``inbox`` holds frames not yet read."""

    name: str
    link: I2CLink
    faults: FaultConfig
    counters: FaultCounters = field(default_factory=FaultCounters)
    inbox: deque[_Frame] = field(default_factory=deque)
    forced: deque[Fault | None] = field(default_factory=deque)

    def __repr__(self) -> str:
        return f"I2CPort({self.name!r}, pending={len(self.inbox)})"

    @property
    def peer(self) -> I2CPort:
        return self.link.card if self is self.link.host else self.link.host

    def fail_next(self, *faults: Fault | None) -> None:
        """Force these faults, in order, on the next frames this port writes (None: intact)."""
        self.forced.extend(faults)

    def write(self, frame: bytes, *, at: float | None = None) -> None:
        """Put ``frame`` on the bus at virtual time ``at`` (default: now, and the writer is busy
        for the transfer time). Faults are applied on the way."""
        frame = bytes(frame)
        link = self.link
        transfer = link.transfer_time(len(frame))
        if at is None:
            link.clock.advance(transfer)
            arrival = link.clock.now
        else:
            arrival = at + transfer
        self.counters.frames += 1
        self.counters.bytes += len(frame)
        fault = self.forced.popleft() if self.forced else link.draw(self.faults)
        if fault is Fault.DROP:
            self.counters.dropped += 1
            return
        if fault is Fault.FLIP and frame:
            frame = link.flip(frame, self.faults.flip_bits)
            self.counters.flipped += 1
        elif fault is Fault.TRUNCATE and frame:
            frame = frame[: link.rng.randrange(len(frame))]
            self.counters.truncated += 1
        elif fault is Fault.DELAY:
            arrival += link.rng.uniform(*self.faults.delay_range)
            self.counters.delayed += 1
        self.peer.inbox.append(_Frame(frame, arrival))

    def receive(self) -> tuple[bytes, float] | None:
        """The next frame waiting here with its arrival time, without waiting (the card side)."""
        if not self.inbox:
            return None
        f = self.inbox.popleft()
        return f.data, f.arrival

    def read(self, timeout: float) -> bytes | None:
        """Wait up to ``timeout`` virtual seconds for a frame (the host side); None on time-out.

        While nothing is waiting here the attached card is stepped. A frame arriving after the
        deadline is discarded (counted as ``late`` against the writer) and the clock moves to it.
        """
        link = self.link
        deadline = link.clock.now + timeout
        link.pump(self)
        if self.inbox and self.inbox[0].arrival <= deadline:
            f = self.inbox.popleft()
            link.clock.advance_to(f.arrival)
            return f.data
        while self.inbox:  # late frames: the reader stopped polling before they came
            self.inbox.popleft()
            self.peer.counters.late += 1
        link.clock.advance_to(deadline)
        return None

    def flush(self) -> int:
        """Discard frames waiting here; returns how many."""
        n = len(self.inbox)
        self.inbox.clear()
        return n


class I2CLink:
    """The bus: a host port, a card port, a clock, a seeded source of faults, the power lines.

    ``faults`` applies to both directions unless ``faults_to_card`` / ``faults_to_host`` say
    otherwise; ``set_faults`` changes them later (a clean bus after a faulty phase).
    """

    def __init__(
        self,
        *,
        faults: FaultConfig | None = None,
        seed: int = 0,
        bitrate: int = 400_000,
        clock: VirtualClock | None = None,
        faults_to_card: FaultConfig | None = None,
        faults_to_host: FaultConfig | None = None,
    ) -> None:
        if bitrate <= 0:
            raise ValueError("bitrate must be positive")
        base = faults or FaultConfig()
        # Fault injection is a simulation, not cryptography: a seeded PRNG is what we want.
        self.rng = random.Random(seed)  # noqa: S311
        self.bitrate = bitrate
        self.clock = clock or VirtualClock()
        self.host = I2CPort("host", self, faults_to_card or base)
        self.card = I2CPort("card", self, faults_to_host or base)
        self._card_side: CardSide | None = None

    def __repr__(self) -> str:
        return f"I2CLink(bitrate={self.bitrate}, t={self.clock.now:.6f})"

    # -- configuration --------------------------------------------------------------------
    def set_faults(
        self, faults: FaultConfig, *, to_card: bool = True, to_host: bool = True
    ) -> None:
        if to_card:
            self.host.faults = faults
        if to_host:
            self.card.faults = faults

    def attach_card(self, card: CardSide) -> None:
        """Connect the card side (stepped by host reads, powered through the lines below)."""
        self._card_side = card

    @property
    def card_side(self) -> CardSide | None:
        return self._card_side

    @property
    def counters(self) -> FaultCounters:
        """Both directions together."""
        return self.host.counters + self.card.counters

    # -- power and reset lines (out of band, never faulty) --------------------------------
    def _card(self) -> CardSide:
        if self._card_side is None:
            raise RuntimeError("no card attached to this link")
        return self._card_side

    def power_on(self) -> bytes:
        self._drain()
        return self._card().power_on()

    def reset(self) -> bytes:
        self._drain()
        return self._card().reset()

    def power_off(self) -> None:
        self._drain()
        self._card().power_off()

    def _drain(self) -> None:
        self.host.flush()
        self.card.flush()

    # -- used by the ports ----------------------------------------------------------------
    def transfer_time(self, n_bytes: int) -> float:
        return (n_bytes + _FRAME_OVERHEAD_BYTES) * _BITS_PER_BYTE / self.bitrate

    def pump(self, reader: I2CPort) -> None:
        """Single-threaded mode: step the card while the host waits with nothing to read."""
        if reader is not self.host or self._card_side is None:
            return
        while not reader.inbox and self.card.inbox:
            self._card_side.step()

    def draw(self, faults: FaultConfig) -> Fault | None:
        if faults.rate <= 0:
            return None
        r = self.rng.random()
        for kind, p in (
            (Fault.FLIP, faults.flip),
            (Fault.DROP, faults.drop),
            (Fault.TRUNCATE, faults.truncate),
            (Fault.DELAY, faults.delay),
        ):
            if r < p:
                return kind
            r -= p
        return None

    def flip(self, frame: bytes, n_bits: int) -> bytes:
        out = bytearray(frame)
        for pos in self.rng.sample(range(len(frame) * 8), min(n_bits, len(frame) * 8)):
            out[pos // 8] ^= 1 << (pos % 8)
        return bytes(out)

"""The simulated I2C link: delivery, virtual time, each injected fault, seeding, power lines."""

from __future__ import annotations

import pytest

from iotid.transport.i2c import Fault, FaultConfig, FaultCounters, I2CLink, VirtualClock

FRAME = bytes(range(20))


class EchoSide:
    """A card side that answers every frame with the frame reversed, after ``think`` seconds."""

    def __init__(self, link: I2CLink, think: float = 0.0) -> None:
        self.port = link.card
        self.think = think
        self.seen: list[bytes] = []
        self.events: list[str] = []
        link.attach_card(self)

    def step(self) -> bool:
        item = self.port.receive()
        if item is None:
            return False
        frame, arrival = item
        self.seen.append(frame)
        self.port.write(frame[::-1], at=arrival + self.think)
        return True

    def power_on(self) -> bytes:
        self.events.append("power_on")
        return b"ATR-cold"

    def reset(self) -> bytes:
        self.events.append("reset")
        return b"ATR-warm"

    def power_off(self) -> None:
        self.events.append("power_off")


def test_frames_arrive_in_order_and_time_is_virtual() -> None:
    link = I2CLink(bitrate=100_000)
    side = EchoSide(link)
    link.host.write(FRAME)
    # 21 bytes (frame + address) x 9 bits at 100 kbit/s
    assert link.clock.now == pytest.approx(21 * 9 / 100_000)
    assert link.host.read(1.0) == FRAME[::-1]
    assert side.seen == [FRAME]
    assert link.clock.now == pytest.approx(2 * 21 * 9 / 100_000)
    assert link.host.counters.frames == 1 and link.card.counters.frames == 1
    assert link.counters.bytes == 40
    assert link.counters.injected == 0


def test_read_times_out_without_sleeping() -> None:
    link = I2CLink()
    EchoSide(link)
    before = link.clock.now
    assert link.host.read(2.5) is None
    assert link.clock.now == pytest.approx(before + 2.5)


def test_card_thinking_past_the_deadline_is_a_timeout_and_the_frame_is_discarded() -> None:
    link = I2CLink()
    EchoSide(link, think=5.0)
    link.host.write(FRAME)
    assert link.host.read(1.0) is None
    assert link.card.counters.late == 1
    assert not link.host.inbox  # nothing stale left to read later
    link.host.write(FRAME)
    assert link.host.read(10.0) == FRAME[::-1]


@pytest.mark.parametrize(
    ("fault", "counter"),
    [
        (Fault.FLIP, "flipped"),
        (Fault.DROP, "dropped"),
        (Fault.TRUNCATE, "truncated"),
        (Fault.DELAY, "delayed"),
    ],
)
def test_each_forced_fault(fault: Fault, counter: str) -> None:
    link = I2CLink(faults=FaultConfig(delay_range=(0.5, 0.5)))
    link.host.fail_next(fault)
    link.host.write(FRAME)
    assert getattr(link.host.counters, counter) == 1
    assert link.host.counters.injected == 1
    got = link.card.receive()
    if fault is Fault.DROP:
        assert got is None
        return
    assert got is not None
    data, arrival = got
    if fault is Fault.FLIP:
        assert len(data) == len(FRAME)
        diff = [a ^ b for a, b in zip(data, FRAME, strict=True)]
        assert sum(bin(d).count("1") for d in diff) == 1
    elif fault is Fault.TRUNCATE:
        assert len(data) < len(FRAME) and FRAME.startswith(data)
    else:
        assert data == FRAME
        assert arrival == pytest.approx(link.clock.now + 0.5)


def test_flip_bits_flips_that_many_distinct_bits() -> None:
    link = I2CLink(faults=FaultConfig(flip=1.0, flip_bits=3), seed=4)
    link.host.write(FRAME)
    got = link.card.receive()
    assert got is not None
    diff = [a ^ b for a, b in zip(got[0], FRAME, strict=True)]
    assert sum(bin(d).count("1") for d in diff) == 3


def test_a_delay_beyond_the_readers_timeout_behaves_like_a_drop() -> None:
    link = I2CLink(faults_to_host=FaultConfig(delay=1.0, delay_range=(3.0, 3.0)))
    EchoSide(link)
    link.host.write(FRAME)
    assert link.host.read(1.0) is None
    assert link.card.counters.delayed == 1 and link.card.counters.late == 1
    link.set_faults(FaultConfig())
    link.host.write(FRAME)
    assert link.host.read(1.0) == FRAME[::-1]


def test_a_short_delay_only_costs_time() -> None:
    link = I2CLink(faults_to_host=FaultConfig(delay=1.0, delay_range=(0.4, 0.4)))
    EchoSide(link)
    link.host.write(FRAME)
    start = link.clock.now
    assert link.host.read(1.0) == FRAME[::-1]
    assert link.clock.now > start + 0.4


def test_probabilities_are_seeded_and_roughly_respected() -> None:
    def run(seed: int) -> tuple[FaultCounters, list[bytes]]:
        link = I2CLink(faults=FaultConfig.uniform(0.2), seed=seed)
        out = []
        for _ in range(2000):
            link.host.write(FRAME)
            got = link.card.receive()
            out.append(got[0] if got else b"")
        return link.host.counters, out

    a, frames_a = run(7)
    b, frames_b = run(7)
    c, _ = run(8)
    assert a == b and frames_a == frames_b
    assert a != c
    assert a.frames == 2000
    assert 300 < a.injected < 500  # 20 % of 2000 = 400
    for kind in (a.flipped, a.dropped, a.truncated, a.delayed):
        assert 50 < kind < 150  # 5 % each = 100


def test_fault_config_validation() -> None:
    with pytest.raises(ValueError, match="sum"):
        FaultConfig(flip=0.6, drop=0.6)
    with pytest.raises(ValueError, match="sum"):
        FaultConfig(drop=-0.1)
    with pytest.raises(ValueError, match="flip_bits"):
        FaultConfig(flip_bits=0)
    with pytest.raises(ValueError, match="delay_range"):
        FaultConfig(delay_range=(2.0, 1.0))
    assert FaultConfig.uniform(0.2).rate == pytest.approx(0.2)
    with pytest.raises(ValueError, match="bitrate"):
        I2CLink(bitrate=0)


def test_directions_can_differ() -> None:
    link = I2CLink(faults_to_card=FaultConfig(drop=1.0))
    link.host.write(FRAME)
    link.card.write(FRAME)
    assert link.card.receive() is None
    assert link.host.inbox and link.host.counters.dropped == 1
    assert link.card.counters.dropped == 0


def test_power_lines_reach_the_card_side_and_drain_the_bus() -> None:
    link = I2CLink()
    side = EchoSide(link)
    link.host.write(FRAME)
    assert link.power_on() == b"ATR-cold"
    assert link.card.receive() is None  # the frame in flight was lost with the reset
    assert link.reset() == b"ATR-warm"
    link.power_off()
    assert side.events == ["power_on", "reset", "power_off"]
    assert link.card_side is side


def test_no_card_attached() -> None:
    link = I2CLink()
    with pytest.raises(RuntimeError, match="no card"):
        link.power_on()
    link.host.write(FRAME)
    assert link.host.read(0.1) is None  # nothing steps, nothing answers


def test_virtual_clock() -> None:
    clock = VirtualClock(1.0)
    clock.advance(0.5)
    clock.advance_to(1.2)  # never backwards
    assert clock.now == pytest.approx(1.5)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    assert "1.5" in repr(clock)

"""ISO/IEC 7816-3 T=1 over the simulated I2C link: codec, each block type, chaining both ways,
error recovery (R-block requests, retransmission), S(RESYNCH), and a property test that no
fault pattern makes the card execute an APDU twice, execute a garbled one, or the host return a
wrong answer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transport_fakes import FAKE_ATR, ScriptedCard

from iotid.transport.base import TransportError
from iotid.transport.i2c import Fault, FaultConfig, I2CLink
from iotid.transport.t1 import (
    Block,
    BlockError,
    Edc,
    RError,
    SType,
    T1CardEndpoint,
    T1Connection,
    T1Params,
    T1TransportError,
    crc16,
    lrc,
    open_t1,
    t1_parameters_from_atr,
)

APDU = bytes.fromhex("00A4040008A000000151000000")


def echo(apdu: bytes) -> bytes:
    return b"R" + apdu + b"\x90\x00"


def wire(
    params: T1Params | None = None,
    *,
    faults: FaultConfig | None = None,
    seed: int = 0,
    processing_time: Callable[[bytes], float] | None = None,
    max_command: int = 65544,
) -> tuple[T1Connection, T1CardEndpoint, ScriptedCard, I2CLink]:
    card = ScriptedCard()
    link = I2CLink(faults=faults, seed=seed)
    endpoint = T1CardEndpoint(
        card, link, params=params, processing_time=processing_time, max_command=max_command
    )
    return T1Connection(link, params=params), endpoint, card, link


# -- codec -----------------------------------------------------------------------------------------
def test_edc_values() -> None:
    assert lrc(bytes([0x00, 0x40, 0x02, 0x12, 0x34])) == bytes([0x40 ^ 0x02 ^ 0x12 ^ 0x34])
    # CRC-16/MCRF4XX check value (reflected 0x1021, preset FFFF, no final XOR)
    assert crc16(b"123456789") == bytes.fromhex("6F91")
    assert Edc.LRC.size == 1 and Edc.CRC.size == 2


@pytest.mark.parametrize("edc", [Edc.LRC, Edc.CRC])
@pytest.mark.parametrize(
    "block",
    [
        Block.i_block(0, b"\x01\x02"),
        Block.i_block(1, bytes(254), more=True),
        Block.i_block(0, b""),
        Block.r_block(1),
        Block.r_block(0, RError.EDC),
        Block.r_block(1, RError.OTHER),
        Block.s_block(SType.RESYNCH),
        Block.s_block(SType.RESYNCH, response=True),
        Block.s_block(SType.IFS, inf=b"\xfe"),
        Block.s_block(SType.ABORT, response=True),
        Block.s_block(SType.WTX, inf=b"\x05"),
    ],
)
def test_every_block_type_round_trips(block: Block, edc: Edc) -> None:
    frame = block.encode(edc)
    assert len(frame) == 3 + len(block.inf) + edc.size
    back = Block.decode(frame, edc, nad=0)
    assert back == block
    assert sum((back.is_i, back.is_r, back.is_s)) == 1
    assert "\x01" not in back.describe()


def test_pcb_coding() -> None:
    """§11.3.2.2: I 0 N(S) M 00000, R 100 N(R) error, S 11 response type."""
    assert Block.i_block(1, b"x", more=True).pcb == 0x60
    assert Block.r_block(1, RError.EDC).pcb == 0x91
    assert Block.s_block(SType.WTX, response=True, inf=b"\x01").pcb == 0xE3
    assert Block.s_block(SType.RESYNCH).pcb == 0xC0
    blk = Block.i_block(1, b"x", more=True)
    assert (blk.ns, blk.more) == (1, True)
    r = Block.r_block(1, RError.OTHER)
    assert (r.nr, r.error) == (1, RError.OTHER)
    s = Block.s_block(SType.IFS, response=True, inf=b"\x20")
    assert s.is_s_of(SType.IFS, response=True) and not s.is_s_of(SType.IFS, response=False)


def _frame(nad: int, pcb: int, inf: bytes = b"") -> bytes:
    body = bytes([nad, pcb, len(inf) & 0xFF]) + inf
    return body + lrc(body)


@pytest.mark.parametrize(
    ("frame", "edc_error"),
    [
        (b"\x00\x00", False),  # shorter than prologue + epilogue
        (_frame(0, 0x00, b"ab")[:-2] + b"\x00", False),  # length does not match LEN
        (_frame(0, 0x00, b"ab")[:-1] + b"\x00", True),  # bad LRC
        (_frame(0x12, 0x00, b"ab"), False),  # unexpected NAD
        (_frame(0, 0x01, b"ab"), False),  # I-block RFU bit
        (_frame(0, 0xA0), False),  # R-block b6 set
        (_frame(0, 0x83), False),  # R-block error code 3
        (_frame(0, 0x80, b"x"), False),  # R-block with data
        (_frame(0, 0xC4), False),  # unknown S type
        (_frame(0, 0xC1), False),  # S(IFS) without its byte
        (_frame(0, 0xC0, b"x"), False),  # S(RESYNCH) with data
        (_frame(0, 0x00, bytes(40)), False),  # longer than the receiver's IFS (32 here)
    ],
)
def test_invalid_blocks_are_rejected(frame: bytes, edc_error: bool) -> None:
    with pytest.raises(BlockError) as info:
        Block.decode(frame, Edc.LRC, nad=0, max_inf=32)
    assert info.value.edc is edc_error


def test_len_ff_is_reserved_and_254_is_the_limit() -> None:
    body = bytes([0, 0, 0xFF]) + bytes(255)
    with pytest.raises(BlockError, match="reserved"):
        Block.decode(body + lrc(body), Edc.LRC, nad=0, max_inf=255)
    with pytest.raises(ValueError, match="254"):
        Block.i_block(0, bytes(255)).encode(Edc.LRC)


def test_crc_catches_what_lrc_misses() -> None:
    frame = Block.i_block(0, b"\x00\x00").encode(Edc.CRC)
    flipped = bytearray(frame)
    flipped[3] ^= 0x01
    flipped[4] ^= 0x01  # two flips in one bit column: invisible to an LRC
    with pytest.raises(BlockError):
        Block.decode(bytes(flipped), Edc.CRC, nad=0)
    lrc_frame = bytearray(Block.i_block(0, b"\x00\x00").encode(Edc.LRC))
    lrc_frame[3] ^= 0x01
    lrc_frame[4] ^= 0x01
    assert Block.decode(bytes(lrc_frame), Edc.LRC, nad=0).inf == b"\x01\x01"


# -- ATR and parameters ----------------------------------------------------------------------------
def test_atr_without_t1_bytes_gives_the_defaults() -> None:
    assert t1_parameters_from_atr(FAKE_ATR) == (32, Edc.LRC)


def test_atr_ta3_tc3() -> None:
    # TS T0(TD1) TD1(TD2, T=0) TD2(TA3 TC3, T=1) TA3=FE TC3=01
    atr = bytes([0x3B, 0x80, 0x80, 0x51, 0xFE, 0x01])
    assert t1_parameters_from_atr(atr) == (254, Edc.CRC)
    with pytest.raises(ValueError, match="truncated"):
        t1_parameters_from_atr(atr[:-1])
    with pytest.raises(ValueError, match="IFSC"):
        t1_parameters_from_atr(bytes([0x3B, 0x80, 0x80, 0x11, 0xFF]))
    with pytest.raises(ValueError, match="short"):
        t1_parameters_from_atr(b"\x3b")


def test_params() -> None:
    assert T1Params(nad=0x21).card_nad == 0x12
    for bad in ({"ifsc": 0}, {"ifsd": 255}, {"bwt": 0}, {"retries": 0}, {"resyncs": 0}):
        with pytest.raises(ValueError):
            T1Params(**bad)


# -- the happy paths -------------------------------------------------------------------------------
def test_one_apdu_one_block_each_way_after_ifsd_negotiation() -> None:
    conn, _, card, link = wire()
    assert conn.atr == FAKE_ATR and card.events == ["power_on"]
    assert conn.transmit(APDU) == echo(APDU)
    assert conn.stats.blocks_sent == 2  # S(IFS request 254), then the I-block
    assert conn.transmit(APDU) == echo(APDU)
    assert conn.stats.blocks_sent == 3
    assert card.apdus == [APDU, APDU]
    assert conn.stats.retransmissions == 0 and link.counters.injected == 0
    conn.close()
    conn.close()
    assert card.events == ["power_on", "process", "process", "power_off"]
    with pytest.raises(TransportError, match="closed"):
        conn.transmit(APDU)


def test_no_negotiation_when_ifsd_is_32() -> None:
    conn, _, _, _ = wire(T1Params(ifsd=32))
    conn.transmit(APDU)
    assert conn.stats.blocks_sent == 1


@pytest.mark.parametrize("edc", [Edc.LRC, Edc.CRC])
def test_command_longer_than_ifsc_is_chained(edc: Edc) -> None:
    conn, endpoint, card, _ = wire(T1Params(ifsc=32, ifsd=32, edc=edc))
    apdu = bytes([0x80, 0xE2, 0x00, 0x00, 0xFF]) + bytes(range(255)) + b"\x00"
    assert conn.transmit(apdu) == echo(apdu)
    assert card.apdus == [apdu]
    # 261 bytes in 32-byte pieces: 9 I-blocks; the answer (264 bytes) in 9 blocks to IFSD 32
    assert endpoint.stats.blocks_received == 9 + 8  # 9 I-blocks, 8 acknowledgements of the answer
    assert conn.stats.blocks_received == 8 + 9


def test_response_longer_than_ifsd_is_chained() -> None:
    conn, _, card, _ = wire(T1Params(ifsd=16))
    card.response = bytes(range(200)) + b"\x90\x00"
    assert conn.transmit(APDU) == card.response
    assert conn.stats.blocks_received == 1 + 13  # S(IFS response), then 202 bytes / 16


def test_params_from_the_atr_by_default() -> None:
    conn = open_t1(ScriptedCard())
    assert conn.params.ifsc == 32 and conn.params.edc is Edc.LRC
    assert conn.transmit(APDU) == echo(APDU)
    assert isinstance(conn.link.card_side, T1CardEndpoint)


def test_a_card_that_raises_answers_6f00() -> None:
    conn, _, card, _ = wire()
    card.fail_with = RuntimeError("boom")
    assert conn.transmit(APDU) == b"\x6f\x00"


# -- recovery --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "recovery"),
    [
        (Fault.FLIP, 1),  # the card: R(0, EDC error); the host: the I-block again
        (Fault.TRUNCATE, 1),
        (Fault.DROP, 2),  # time-out: R(0) "I expect your I-block 0"; the card: R(0); I-block
        (Fault.DELAY, 1),  # came late: the card ran it, its answer was late, R(0) fetches it
    ],
)
def test_damaged_command_block_is_sent_again(fault: Fault, recovery: int) -> None:
    conn, _, card, link = wire(T1Params(ifsd=32), faults=FaultConfig(delay_range=(5.0, 5.0)))
    link.host.fail_next(fault)
    assert conn.transmit(APDU) == echo(APDU)
    assert card.apdus == [APDU]
    assert conn.stats.retransmissions == recovery


@pytest.mark.parametrize("fault", [Fault.FLIP, Fault.DROP, Fault.TRUNCATE, Fault.DELAY])
def test_lost_answer_is_resent_by_the_card_not_recomputed(fault: Fault) -> None:
    conn, endpoint, card, link = wire(T1Params(ifsd=32), faults=FaultConfig(delay_range=(5.0, 5.0)))
    link.card.fail_next(fault)
    assert conn.transmit(APDU) == echo(APDU)
    assert card.apdus == [APDU]  # executed once
    assert endpoint.stats.retransmissions == 1  # its last I-block, again


def test_damage_in_both_chains_is_repaired() -> None:
    conn, endpoint, card, link = wire(T1Params(ifsc=16, ifsd=16))
    apdu = bytes(100)
    # host frames: S(IFS), S(IFS) again (flipped), ...; a late R acknowledgement dropped
    link.host.fail_next(None, Fault.FLIP, *[None] * 10, Fault.DROP)
    # card frames: S(IFS) response (dropped), ..., an acknowledgement of the command chain
    # (9th, truncated), a block of the answer (12th, flipped)
    link.card.fail_next(Fault.DROP, *[None] * 7, Fault.TRUNCATE, None, None, Fault.FLIP)
    assert conn.transmit(apdu) == echo(apdu)
    assert card.apdus == [apdu]
    assert conn.stats.invalid == 2 and conn.stats.timeouts == 2
    assert endpoint.stats.invalid == 1
    assert endpoint.stats.retransmissions >= 2  # answer blocks sent again, never re-run


def test_delay_shorter_than_bwt_costs_time_only() -> None:
    conn, _, _, link = wire(T1Params(ifsd=32), faults=FaultConfig(delay_range=(0.5, 0.5)))
    link.card.fail_next(Fault.DELAY)
    before = link.clock.now
    assert conn.transmit(APDU) == echo(APDU)
    assert conn.stats.retransmissions == 0
    assert link.clock.now - before > 0.5


def test_wtx_from_the_card_endpoint() -> None:
    conn, endpoint, card, link = wire(T1Params(ifsd=32, bwt=1.0), processing_time=lambda apdu: 2.5)
    before = link.clock.now
    assert conn.transmit(APDU) == echo(APDU)
    assert conn.stats.wtx == 1 and endpoint.stats.wtx == 1
    assert conn.stats.retransmissions == 0
    assert link.clock.now - before >= 2.5
    # the S(WTX request) lost, then the S(WTX response) damaged: recovered, executed once
    link.card.fail_next(Fault.DROP)
    link.host.fail_next(None, None, Fault.FLIP)
    assert conn.transmit(APDU) == echo(APDU)
    assert card.apdus == [APDU, APDU]


def test_card_aborts_an_over_long_chain() -> None:
    conn, endpoint, card, link = wire(T1Params(ifsc=16, ifsd=32), max_command=40)
    with pytest.raises(T1TransportError) as info:
        conn.transmit(bytes(100))
    assert info.value.command_delivered is False and not info.value.resynchronised
    assert info.value.aborted
    assert conn.stats.aborts == 1 and endpoint.stats.aborts == 1
    assert card.apdus == []
    assert conn.transmit(APDU) == echo(APDU)  # both sides are in step afterwards
    # the S(ABORT response) damaged: the card asks again, the host answers again
    link.host.fail_next(None, None, None, Fault.FLIP)
    with pytest.raises(T1TransportError):
        conn.transmit(bytes(100))
    assert conn.transmit(APDU) == echo(APDU)
    assert card.apdus == [APDU, APDU]


def test_resync_after_the_command_was_delivered_is_reported() -> None:
    conn, endpoint, card, link = wire(T1Params(ifsd=32, retries=3))
    link.card.fail_next(*[Fault.DROP] * 4)  # the answer and its three re-sends
    with pytest.raises(T1TransportError) as info:
        conn.transmit(APDU)
    err = info.value
    assert err.command_delivered and err.resynchronised and not err.broken
    assert card.apdus == [APDU]  # executed once: the host cannot know, the test can
    assert conn.stats.resyncs == 1 and endpoint.stats.resyncs == 1
    assert conn.transmit(APDU) == echo(APDU)  # N(S) = 0 on both sides again


def test_resync_before_the_final_block_restarts_the_apdu() -> None:
    conn, _, card, link = wire(T1Params(ifsc=16, ifsd=32, retries=3))
    apdu = bytes(range(40))
    link.card.fail_next(*[Fault.DROP] * 4)  # the acknowledgement of the first block, 4 times
    assert conn.transmit(apdu) == echo(apdu)
    assert conn.stats.resyncs == 1 and conn.stats.restarts == 1
    assert card.apdus == [apdu]


def test_resync_renegotiates_ifsd() -> None:
    conn, _, card, link = wire(T1Params(ifsd=64, retries=1))
    conn.transmit(APDU)
    link.card.fail_next(Fault.DROP, Fault.DROP)
    with pytest.raises(T1TransportError):
        conn.transmit(APDU)
    card.response = bytes(100) + b"\x90\x00"
    assert conn.transmit(APDU) == card.response
    assert conn.stats.blocks_received >= 4  # S(IFS) twice, answers in 64-byte pieces


def test_failed_resync_breaks_the_link_until_reset() -> None:
    conn, _, card, link = wire(T1Params(ifsd=32))
    link.set_faults(FaultConfig(drop=1.0), to_card=False)
    with pytest.raises(T1TransportError) as info:
        conn.transmit(APDU)
    assert info.value.broken and not info.value.resynchronised
    assert conn.broken
    with pytest.raises(T1TransportError) as again:
        conn.transmit(APDU)
    assert again.value.broken and again.value.command_delivered is False
    link.set_faults(FaultConfig())
    assert conn.reset() == FAKE_ATR
    assert card.events[-1] == "reset"
    assert conn.transmit(APDU) == echo(APDU)
    assert card.apdus == [APDU, APDU]


def test_ifs_negotiation_failure_is_not_a_delivery() -> None:
    conn, _, card, link = wire(T1Params(ifsd=64, retries=1, resyncs=1))
    link.set_faults(FaultConfig(drop=1.0), to_card=False)
    with pytest.raises(T1TransportError) as info:
        conn.transmit(APDU)
    assert info.value.command_delivered is False
    assert card.apdus == []


# -- the host against a scripted card --------------------------------------------------------------
class ScriptedT1:
    """A card side that answers each host block as ``script`` says (blocks, with extra delay)."""

    def __init__(self, link: I2CLink, script: Callable[[Block], tuple[Block, float] | None]):
        self.port = link.card
        self.script = script
        self.seen: list[Block] = []
        link.attach_card(self)

    def step(self) -> bool:
        item = self.port.receive()
        if item is None:
            return False
        block = Block.decode(item[0], Edc.LRC, nad=0)
        self.seen.append(block)
        answer = self.script(block)
        if answer is not None:
            self.port.write(answer[0].encode(Edc.LRC), at=item[1] + answer[1])
        return True

    def power_on(self) -> bytes:
        return FAKE_ATR

    reset = power_on

    def power_off(self) -> None:
        pass


def test_host_answers_wtx_and_waits_longer() -> None:
    link = I2CLink()

    def script(b: Block) -> tuple[Block, float] | None:
        if b.is_i:
            return Block.s_block(SType.WTX, inf=b"\x03"), 0.0
        if b.is_s_of(SType.WTX, response=True):
            return Block.i_block(0, b"\x90\x00"), 2.5  # > BWT, < 3 x BWT
        return None

    side = ScriptedT1(link, script)
    conn = T1Connection(link, params=T1Params(ifsd=32, bwt=1.0))
    assert conn.transmit(APDU) == b"\x90\x00"
    assert side.seen[1] == Block.s_block(SType.WTX, response=True, inf=b"\x03")
    assert conn.stats.retransmissions == 0


def test_host_follows_an_ifs_request_from_the_card() -> None:
    link = I2CLink()
    state = {"asked": False}

    def script(b: Block) -> tuple[Block, float] | None:
        if b.is_i and not state["asked"]:
            state["asked"] = True
            return Block.s_block(SType.IFS, inf=b"\x0a"), 0.0
        if b.is_s_of(SType.IFS, response=True):
            return Block.r_block(1), 0.0  # first block acknowledged
        if b.is_i and b.more:
            return Block.r_block(b.ns ^ 1), 0.0
        if b.is_i:
            return Block.i_block(0, b"\x90\x00"), 0.0
        return None

    side = ScriptedT1(link, script)
    conn = T1Connection(link, params=T1Params(ifsc=32, ifsd=32))
    assert conn.transmit(bytes(60)) == b"\x90\x00"
    assert side.seen[1] == Block.s_block(SType.IFS, response=True, inf=b"\x0a")
    later = [b for b in side.seen[2:] if b.is_i]
    assert later and all(len(b.inf) <= 10 for b in later)
    assert sum(len(b.inf) for b in later) == 60 - 32


def test_host_refuses_a_resynch_request_from_the_card() -> None:
    link = I2CLink()

    def script(b: Block) -> tuple[Block, float] | None:
        if b.is_i:
            return Block.s_block(SType.RESYNCH), 0.0  # only the interface device may send it
        if b.is_r:
            return Block.i_block(0, b"\x90\x00"), 0.0
        return None

    side = ScriptedT1(link, script)
    conn = T1Connection(link, params=T1Params(ifsd=32))
    assert conn.transmit(APDU) == b"\x90\x00"
    assert side.seen[1] == Block.r_block(0, RError.OTHER)


def test_host_resends_its_r_block_when_the_card_does_not_understand_it() -> None:
    link = I2CLink()
    n = {"r": 0}

    def script(b: Block) -> tuple[Block, float] | None:
        if b.is_i:
            return Block.i_block(0, b"\x01", more=True), 0.0
        n["r"] += 1
        if n["r"] == 1:
            return Block.r_block(1, RError.EDC), 0.0  # "your R-block was damaged"
        return Block.i_block(1, b"\x90\x00"), 0.0

    side = ScriptedT1(link, script)
    conn = T1Connection(link, params=T1Params(ifsd=32))
    assert conn.transmit(APDU) == b"\x01\x90\x00"
    assert side.seen[1] == side.seen[2] == Block.r_block(1)  # Rule 7.2: the same R-block


def test_host_rejects_an_i_block_with_the_wrong_sequence_number() -> None:
    link = I2CLink()
    n = {"i": 0}

    def script(b: Block) -> tuple[Block, float] | None:
        n["i"] += 1
        if n["i"] == 1:
            return Block.i_block(1, b"\x6f\x00"), 0.0  # N(S) 1 where 0 is expected
        return Block.i_block(0, b"\x90\x00"), 0.0

    side = ScriptedT1(link, script)
    conn = T1Connection(link, params=T1Params(ifsd=32))
    assert conn.transmit(APDU) == b"\x90\x00"
    assert side.seen[1] == Block.r_block(0, RError.OTHER)


def test_host_gives_up_on_endless_wtx() -> None:
    link = I2CLink()

    def script(b: Block) -> tuple[Block, float] | None:
        if b.is_s_of(SType.RESYNCH, response=False):
            return Block.s_block(SType.RESYNCH, response=True), 0.0
        return Block.s_block(SType.WTX, inf=b"\x01"), 0.0

    ScriptedT1(link, script)
    conn = T1Connection(link, params=T1Params(ifsd=32))
    with pytest.raises(T1TransportError, match="more time") as info:
        conn.transmit(APDU)
    assert info.value.command_delivered and info.value.resynchronised


# -- the card endpoint's own rules -----------------------------------------------------------------
def _card_answers(link: I2CLink, endpoint: T1CardEndpoint, block: Block) -> Block:
    link.host.write(block.encode(Edc.LRC))
    assert endpoint.step()
    got = link.host.inbox.popleft()
    return Block.decode(got.data, Edc.LRC, nad=0)


def test_card_endpoint_rules() -> None:
    card = ScriptedCard()
    link = I2CLink()
    ep = T1CardEndpoint(card, link)
    assert not ep.step()  # nothing to do
    # an I-block with the wrong N(S): "I expect N(S) 0"
    assert _card_answers(link, ep, Block.i_block(1, APDU)) == Block.r_block(0, RError.OTHER)
    # damaged block: R-block with the EDC error code
    link.host.write(Block.i_block(0, APDU).encode(Edc.LRC)[:-1] + b"\x00")
    ep.step()
    assert Block.decode(link.host.inbox.popleft().data, Edc.LRC, nad=0) == Block.r_block(
        0, RError.EDC
    )
    # WTX is the card's to ask; IFS 0 is invalid
    assert _card_answers(link, ep, Block.s_block(SType.WTX, inf=b"\x01")).is_r
    assert _card_answers(link, ep, Block.s_block(SType.IFS, inf=b"\x00")).is_r
    # a stray S response
    assert _card_answers(link, ep, Block.s_block(SType.IFS, response=True, inf=b"\x20")).is_r
    # the host aborts (our host never does): S(ABORT response)
    answer = _card_answers(link, ep, Block.s_block(SType.ABORT))
    assert answer.is_s_of(SType.ABORT, response=True)
    # a normal exchange, then the host says it lost the answer: the same block, not re-run
    first = _card_answers(link, ep, Block.i_block(0, APDU))
    assert first == Block.i_block(0, echo(APDU))
    assert _card_answers(link, ep, Block.r_block(0, RError.OTHER)) == first
    assert card.apdus == [APDU]
    # an R-block that asks for nothing: the card says which I-block it expects
    assert _card_answers(link, ep, Block.r_block(1)) == Block.r_block(1)
    assert repr(ep).startswith("T1CardEndpoint(")


# -- property: faults never produce a wrong answer or a double execution ---------------------------
@settings(max_examples=80)
@given(
    seed=st.integers(0, 2**32 - 1),
    rate=st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.4]),
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=6),
    ifsc=st.sampled_from([8, 32, 254]),
    ifsd=st.sampled_from([8, 32, 254]),
    edc=st.sampled_from([Edc.LRC, Edc.CRC]),
)
def test_faults_never_yield_a_wrong_answer(
    seed: int, rate: float, sizes: list[int], ifsc: int, ifsd: int, edc: Edc
) -> None:
    conn, _, card, link = wire(
        T1Params(ifsc=ifsc, ifsd=ifsd, edc=edc), faults=FaultConfig.uniform(rate), seed=seed
    )
    sent: list[bytes] = []
    for n, size in enumerate(sizes):
        apdu = bytes([n]) + bytes((n + i) & 0xFF for i in range(size))
        sent.append(apdu)
        executed_before = len(card.apdus)
        try:
            assert conn.transmit(apdu) == echo(apdu)
            assert card.apdus[executed_before:] == [apdu]  # exactly once
        except T1TransportError as exc:
            executed = card.apdus[executed_before:]
            assert executed in ([], [apdu])  # at most once, never garbled
            if not exc.command_delivered:
                assert executed == []
            if exc.broken:
                link.set_faults(FaultConfig())
                conn.reset()
                link.set_faults(FaultConfig.uniform(rate))
    assert all(a in sent for a in card.apdus)

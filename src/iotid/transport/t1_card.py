"""The card side of ISO/IEC 7816-3 T=1 (§11): serves any ``CardLike`` over the I2C link.

Scope: ``T1CardEndpoint``, stepped by the link when the host waits (one thread, deterministic):
receives I-blocks and reassembles chained commands (acknowledging each with an R-block), runs
the APDU once, sends the answer chained to IFSD, re-sends its last block when the host's R-block
asks for it (the APDU is never executed again), answers S(RESYNCH), S(IFS) and S(ABORT)
requests, asks for S(WTX) when an APDU takes longer than BWT, and refuses an over-long command
chain with S(ABORT). Power and reset lines reset its T=1 state and the card's.

Not in scope: the host side (``t1``), the card's behaviour (whatever ``CardLike`` is served;
``iotid.se`` is never imported here).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from iotid.transport.base import CardLike, logger
from iotid.transport.i2c import I2CLink
from iotid.transport.t1_blocks import (
    DEFAULT_IFS,
    MAX_INF,
    Block,
    BlockError,
    RError,
    SType,
    T1Params,
    T1Stats,
    t1_parameters_from_atr,
)

__all__ = ["T1CardEndpoint"]

_log = logger.getChild("t1.card")


class T1CardEndpoint:
    """The card side of T=1 over ``link``: serves ``card`` (any ``CardLike``).

    ``params`` None: IFSC and EDC from the card's ATR. ``processing_time(apdu)`` gives the
    virtual seconds the card computes on an APDU (default 0); beyond BWT it first sends
    S(WTX request). A command chain longer than ``max_command`` is refused with S(ABORT).
    """

    def __init__(
        self,
        card: CardLike,
        link: I2CLink,
        *,
        params: T1Params | None = None,
        processing_time: Callable[[bytes], float] | None = None,
        max_command: int = 65544,
    ) -> None:
        if params is None:
            ifsc, edc = t1_parameters_from_atr(bytes(card.atr))
            params = T1Params(ifsc=ifsc, edc=edc)
        self.params = params
        self.stats = T1Stats()
        self._card = card
        self._port = link.card
        self._processing_time = processing_time
        self._max_command = max_command
        self._reset_state()
        link.attach_card(self)

    def __repr__(self) -> str:
        return f"T1CardEndpoint({type(self._card).__name__}, IFSC={self._ifsc})"

    # -- power lines ---------------------------------------------------------------------------
    def power_on(self) -> bytes:
        self._reset_state()
        return bytes(self._card.power_on())

    def reset(self) -> bytes:
        self._reset_state()
        return bytes(self._card.reset())

    def power_off(self) -> None:
        self._reset_state()
        self._card.power_off()

    def _reset_state(self) -> None:
        self._expected = 0  # N(S) of the host's next I-block
        self._ns = 0  # N(S) of our next I-block
        self._rx = bytearray()
        self._tx = b""
        self._last_i: Block | None = None  # our last I-block, until the host acknowledges it
        self._pending_s: Block | None = None  # our S(WTX request) awaiting its response
        self._pending_apdu = b""
        self._busy_until = 0.0
        self._aborting = False
        self._ifsd = DEFAULT_IFS
        self._ifsc = self.params.ifsc

    # -- the bus -------------------------------------------------------------------------------
    def step(self) -> bool:
        item = self._port.receive()
        if item is None:
            return False
        frame, arrival = item
        reply, at = self._handle(frame, arrival)
        self._port.write(reply.encode(self.params.edc), at=at)
        self.stats.blocks_sent += 1
        return True

    def _r(self, error: RError = RError.OK) -> Block:
        return Block.r_block(self._expected, error, nad=self.params.card_nad)

    def _s(self, stype: SType, *, response: bool, inf: bytes = b"") -> Block:
        return Block.s_block(stype, response=response, inf=inf, nad=self.params.card_nad)

    def _handle(self, frame: bytes, t: float) -> tuple[Block, float]:
        p = self.params
        try:
            block = Block.decode(frame, p.edc, nad=p.nad, max_inf=self._ifsc)
        except BlockError as exc:
            self.stats.invalid += 1
            self.stats.retransmissions += 1
            if self._pending_s is not None or self._aborting:  # Rule 7.3: our request again
                return self._outstanding_request(), t
            return self._r(RError.EDC if exc.edc else RError.OTHER), t  # Rule 7.1
        self.stats.blocks_received += 1
        if block.is_s and not block.is_response:
            return self._on_request(block), t
        pending = self._pending_s
        if (
            pending is not None
            and block.is_s_of(SType.WTX, response=True)
            and block.inf == pending.inf
        ):
            self._pending_s = None
            return self._execute(self._pending_apdu), max(t, self._busy_until)
        if block.is_s_of(SType.ABORT, response=True) and self._aborting:
            self._aborting = False
            return self._r(), t  # the chain is gone; the turn goes back to the host
        if self._pending_s is not None or self._aborting:
            self.stats.retransmissions += 1
            return self._outstanding_request(), t
        if block.is_r:
            last = self._last_i
            if last is not None and block.nr == last.ns:  # Rule 7.1: the host lost our block
                self.stats.retransmissions += 1
                return last, t
            if last is not None and last.more:  # Rule 5: our chained block is acknowledged
                return self._next_block(), t
            return self._r(), t  # the I-block we expect
        if block.is_i:
            return self._on_i_block(block, t)
        return self._r(RError.OTHER), t  # a stray S response

    def _outstanding_request(self) -> Block:
        return self._pending_s or self._s(SType.ABORT, response=False)

    def _on_request(self, block: Block) -> Block:
        if block.stype is SType.RESYNCH:  # Rule 6.2: N(S) = 0 both ways, IFS initial, no chain
            self.stats.resyncs += 1
            self._reset_state()
            return self._s(SType.RESYNCH, response=True)
        if block.stype is SType.IFS and 1 <= block.inf[0] <= MAX_INF:  # Rule 4
            self._ifsd = block.inf[0]
            return self._s(SType.IFS, response=True, inf=block.inf)
        if block.stype is SType.ABORT:  # Rule 9 (our host never sends it): drop both chains
            self._rx.clear()
            self._tx, self._last_i = b"", None
            return self._s(SType.ABORT, response=True)
        return self._r(RError.OTHER)  # WTX is the card's to request; bad IFS values

    def _on_i_block(self, block: Block, t: float) -> tuple[Block, float]:
        if block.ns != self._expected or (self._last_i is not None and self._last_i.more):
            return self._r(RError.OTHER), t
        if len(self._rx) + len(block.inf) > self._max_command:
            self._rx.clear()
            self._aborting = True
            self.stats.aborts += 1
            return self._s(SType.ABORT, response=False), t
        self._expected ^= 1
        self._last_i = None  # Rule 2: the host's I-block acknowledges our last one
        self._rx += block.inf
        if block.more:
            return self._r(), t  # Rule 5: acknowledge, N(R) = the next N(S) expected
        apdu = bytes(self._rx)
        self._rx.clear()
        delay = self._processing_time(apdu) if self._processing_time else 0.0
        if delay > self.params.bwt:  # Rule 3: ask for a waiting time extension
            self.stats.wtx += 1
            self._pending_apdu, self._busy_until = apdu, t + delay
            self._pending_s = self._s(
                SType.WTX, response=False, inf=bytes([min(255, math.ceil(delay / self.params.bwt))])
            )
            return self._pending_s, t
        return self._execute(apdu), t + delay

    def _execute(self, apdu: bytes) -> Block:
        self.stats.apdus += 1
        try:
            response = bytes(self._card.process(apdu))
        except Exception:  # a card answers 6F00 to its own failures; guard anyway
            _log.exception("card raised while processing an APDU")
            response = b""
        self._tx = response if len(response) >= 2 else b"\x6f\x00"
        return self._next_block()

    def _next_block(self) -> Block:
        chunk, self._tx = self._tx[: self._ifsd], self._tx[self._ifsd :]
        block = Block.i_block(self._ns, chunk, more=bool(self._tx), nad=self.params.card_nad)
        self._ns ^= 1
        self._last_i = block
        return block

"""ISO/IEC 7816-3 T=1 (§11), host side, over the simulated I2C link; the package's entry point.

Scope: ``T1Connection``, a ``Connection`` sending each APDU as I-blocks chained to IFSC,
collecting the card's chained answer, recovering from errors by the rules of §11.6.3 (R-block
requests, re-sent R and S requests, S(RESYNCH)), negotiating IFSD, answering the card's WTX,
IFS and ABORT requests; ``open_t1`` wires a card, a ``T1CardEndpoint`` and a link together. The
codec and the card side live in ``t1_blocks`` and ``t1_card`` and are re-exported here.

Safety rule: T=1 recovery never makes the card execute an APDU twice (a lost answer is re-sent
from the card's last block, never recomputed). When recovery needs S(RESYNCH), the host cannot
tell whether a final I-block it sent was executed: ``T1TransportError.command_delivered`` says
whether it may have been, and only when it cannot have been does ``transmit`` restart the APDU
itself (readers following Rule 6.3 restart it blindly). Whether to send it again after that is
``iotid.host.resilience``'s decision.

Not in scope: the bus and its faults (``i2c``), PPS, character timing (CWT: I2C frames are
whole), VPP, NAD addressing of several cards, what the APDUs mean.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from iotid.transport.base import CardLike, Connection, TransportError, log_traffic, logger
from iotid.transport.i2c import FaultConfig, I2CLink
from iotid.transport.t1_blocks import (
    DEFAULT_IFS,
    MAX_INF,
    MAX_RESPONSE,
    Block,
    BlockError,
    Edc,
    RError,
    SType,
    T1Params,
    T1Stats,
    crc16,
    lrc,
    t1_parameters_from_atr,
)
from iotid.transport.t1_card import T1CardEndpoint

__all__ = [
    "Block",
    "BlockError",
    "Edc",
    "RError",
    "SType",
    "T1CardEndpoint",
    "T1Connection",
    "T1Params",
    "T1Stats",
    "T1TransportError",
    "crc16",
    "lrc",
    "open_t1",
    "t1_parameters_from_atr",
]

_log = logger.getChild("t1")


class T1TransportError(TransportError):
    """T=1 could not carry one APDU.

    ``command_delivered``: the final I-block reached the bus, so the card may have executed the
    command; False means it cannot have. ``resynchronised``: S(RESYNCH) succeeded and the link is
    usable. ``broken``: RESYNCH failed too; ``T1Connection.reset()`` is needed. ``aborted``: the
    card refused the command chain with S(ABORT) (not a bus fault: sending it again is futile).
    """

    def __init__(
        self,
        message: str,
        *,
        command_delivered: bool,
        resynchronised: bool,
        broken: bool = False,
        aborted: bool = False,
    ) -> None:
        super().__init__(message)
        self.command_delivered = command_delivered
        self.resynchronised = resynchronised
        self.broken = broken
        self.aborted = aborted


class _Escalate(Exception):  # noqa: N818  (control flow, never leaves this module)
    """Block-level recovery is exhausted: time for S(RESYNCH) (§11.6.3.2 Rule 6)."""

    def __init__(self, why: str, *, give_up: bool = False) -> None:
        super().__init__(why)
        self.give_up = give_up


#: Placeholder before the first I-block is built.
_NO_BLOCK = Block(0, 0)
#: Bound on S(WTX) requests honoured for one APDU: a card asking for ever is a dead card.
MAX_WTX_PER_APDU = 64


class T1Connection(Connection):
    """The host side of T=1 over ``link``: a ``Connection`` (APDU in, response out).
    Thread-safe: transmits are serialised (T=1 is half duplex).

    ``params`` None: IFSC and EDC from the ATR, the other parameters default; IFSD is
    negotiated with S(IFS request) before the first APDU when it differs from 32.
    """

    def __init__(self, link: I2CLink, *, params: T1Params | None = None) -> None:
        self._link = link
        self._port = link.host
        self._lock = threading.Lock()
        self._given = params
        self._closed = False
        self._broken = False
        self._final_sent = False
        self.stats = T1Stats()
        self._power(cold=True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._broken else "open"
        return f"T1Connection({state}, IFSC={self._ifsc}, {self.params.edc.name})"

    # -- Connection ---------------------------------------------------------------------------
    @property
    def atr(self) -> bytes:
        return self._atr

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def broken(self) -> bool:
        """RESYNCH failed: every transmit fails until ``reset``."""
        return self._broken

    @property
    def link(self) -> I2CLink:
        return self._link

    def transmit(self, apdu: bytes) -> bytes:
        """Send one APDU; its response. ``T1TransportError`` when T=1 could not carry it."""
        if not apdu:
            raise ValueError("empty command APDU")
        with self._lock:
            return self._transmit(bytes(apdu))

    def _transmit(self, apdu: bytes) -> bytes:
        if self._closed:
            raise TransportError("T=1 connection is closed")
        if self._broken:
            raise T1TransportError(
                "T=1 link lost: reset the card",
                command_delivered=False,
                resynchronised=False,
                broken=True,
            )
        self.stats.apdus += 1
        log_traffic(">>", apdu, _log)
        for _ in range(self.params.resyncs):
            self._final_sent = False
            try:
                if self._ifsd_pending:
                    self._negotiate_ifsd()
                response = self._exchange(apdu)
            except _Escalate as esc:
                delivered = self._final_sent
                if not self._resynch():
                    self._broken = True
                    self.stats.failures += 1
                    raise T1TransportError(
                        f"T=1: {esc}; S(RESYNCH) failed too, reset the card",
                        command_delivered=delivered,
                        resynchronised=False,
                        broken=True,
                    ) from None
                if delivered or esc.give_up:
                    self.stats.failures += 1
                    raise T1TransportError(
                        f"T=1: {esc}; resynchronised, the command may have been executed",
                        command_delivered=delivered,
                        resynchronised=True,
                    ) from None
                # Nothing reached the card's application: send the APDU again (Rule 6.3).
                self.stats.restarts += 1
                continue
            log_traffic("<<", response, _log)
            if len(response) < 2:  # ISO 7816-4 §5.1: a response ends with SW1 SW2
                raise T1TransportError(
                    "malformed response: no status word",
                    command_delivered=True,
                    resynchronised=False,
                )
            return response
        self.stats.failures += 1
        raise T1TransportError(
            "T=1: no progress after repeated S(RESYNCH)",
            command_delivered=False,
            resynchronised=True,
        )

    def reset(self) -> bytes:
        """Warm reset through the reset line (§6.2.3): the card's transient state (selected
        application, secure channel) is lost; T=1 starts afresh. Returns the ATR."""
        with self._lock:
            if self._closed:
                raise TransportError("T=1 connection is closed")
            self._power(cold=False)
            return self._atr

    def close(self) -> None:
        """Power the card off. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._link.power_off()

    def __enter__(self) -> T1Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- state --------------------------------------------------------------------------------
    def _power(self, *, cold: bool) -> None:
        atr = bytes(self._link.power_on() if cold else self._link.reset())
        if self._given is None:
            ifsc, edc = t1_parameters_from_atr(atr)
            self.params = T1Params(ifsc=ifsc, edc=edc)
        else:
            self.params = self._given
        self._atr = atr
        self._broken = False
        self._final_sent = False
        self._initial_protocol_state()

    def _initial_protocol_state(self) -> None:
        """After the ATR or a RESYNCH (§11.6.3.2 Rule 6.2): N(S)=0 both ways, IFS initial."""
        self._ns = 0  # N(S) of our next (or in-flight) I-block
        self._nr = 0  # N(S) we expect on the card's next I-block
        self._ifsc = self.params.ifsc
        self._ifsd = DEFAULT_IFS
        self._ifsd_pending = self.params.ifsd != DEFAULT_IFS

    # -- one block out, one block in ----------------------------------------------------------
    def _roundtrip(self, block: Block, wait: float) -> tuple[Block | None, RError]:
        """Send ``block``; the answer, or None and the R-block error code to report (§11.6.3.1)."""
        p = self.params
        self._port.flush()  # half duplex: nothing older than this block may be read after it
        self._port.write(block.encode(p.edc))
        self.stats.blocks_sent += 1
        _log.debug("T=1 >> %s", block.describe())
        frame = self._port.read(wait)
        if frame is None:
            self.stats.timeouts += 1
            return None, RError.OTHER
        try:
            reply = Block.decode(frame, p.edc, nad=p.card_nad, max_inf=self._ifsd)
        except BlockError as exc:
            self.stats.invalid += 1
            return None, RError.EDC if exc.edc else RError.OTHER
        self.stats.blocks_received += 1
        _log.debug("T=1 << %s", reply.describe())
        return reply, RError.OK

    def _recover(self, last: Block, code: RError, errors: int) -> Block:
        """The block to send after an error: the same R-block again (Rule 7.2), else an R-block
        asking for the I-block we expect (Rule 7.1). Past ``retries``, escalate (Rule 6)."""
        if errors > self.params.retries:
            raise _Escalate(f"{errors} consecutive block errors")
        self.stats.retransmissions += 1
        if last.is_r:
            return last
        return Block.r_block(self._nr, code, nad=self.params.nad)

    def _s_exchange(self, stype: SType, inf: bytes) -> None:
        """Send S(request) until its response comes (Rule 7.3: the request is re-sent)."""
        request = Block.s_block(stype, inf=inf, nad=self.params.nad)
        errors = 0
        while True:
            reply, _ = self._roundtrip(request, self.params.bwt)
            if reply is not None and reply.is_s_of(stype, response=True) and reply.inf == inf:
                return
            errors += 1
            if errors > self.params.retries:
                raise _Escalate(f"no S({stype.name} response)")
            self.stats.retransmissions += 1

    def _negotiate_ifsd(self) -> None:
        """Rule 4: announce our IFSD with S(IFS request)."""
        ifsd = self.params.ifsd
        self._s_exchange(SType.IFS, bytes([ifsd]))
        self._ifsd = ifsd
        self._ifsd_pending = False

    def _resynch(self) -> bool:
        """Rule 6: S(RESYNCH request), up to ``resyncs`` times; True when the card answered."""
        p = self.params
        self.stats.resyncs += 1
        request = Block.s_block(SType.RESYNCH, nad=p.nad)
        for attempt in range(p.resyncs):
            if attempt:
                self.stats.retransmissions += 1
            reply, _ = self._roundtrip(request, p.bwt)
            if reply is not None and reply.is_s_of(SType.RESYNCH, response=True):
                self._initial_protocol_state()
                return True
        return False

    def _answer_abort(self) -> None:
        """Rule 9: the card aborted our chain; S(ABORT response) until it hands the turn back."""
        response = Block.s_block(SType.ABORT, response=True, nad=self.params.nad)
        errors = 0
        while True:
            reply, _ = self._roundtrip(response, self.params.bwt)
            if reply is not None and reply.is_r:
                return
            errors += 1
            if errors > self.params.retries:
                raise _Escalate("ABORT handshake failed")
            self.stats.retransmissions += 1

    # -- one APDU -----------------------------------------------------------------------------
    def _exchange(self, apdu: bytes) -> bytes:
        x = _Exchange(apdu, self.params.bwt)
        x.current = x.out = self._next_i_block(x)
        while True:
            if x.out is x.current and not x.more:
                self._final_sent = True
            reply, code = self._roundtrip(x.out, x.wait)
            x.wait = self.params.bwt
            if reply is None:
                x.errors += 1
                x.out = self._recover(x.out, code, x.errors)
            elif reply.is_i:
                done = self._on_i_block(x, reply)
                if done is not None:
                    return done
            elif reply.is_r:
                self._on_r_block(x, reply)
            else:
                self._on_s_block(x, reply)

    def _next_i_block(self, x: _Exchange) -> Block:
        chunk = x.apdu[x.offset : x.offset + self._ifsc]
        x.more = x.offset + len(chunk) < len(x.apdu)
        return Block.i_block(self._ns, chunk, more=x.more, nad=self.params.nad)

    def _on_i_block(self, x: _Exchange, reply: Block) -> bytes | None:
        if not x.receiving and x.more:  # a chained block is acknowledged by an R-block
            x.errors += 1
            x.out = self._recover(x.out, RError.OTHER, x.errors)
            return None
        if not x.receiving:  # Rule 2: the card's I-block acknowledges our last one
            self._ns ^= 1
            x.receiving = True
        if reply.ns != self._nr:
            x.errors += 1
            x.out = self._recover(x.out, RError.OTHER, x.errors)
            return None
        self._nr ^= 1
        x.response += reply.inf
        x.errors = 0
        if len(x.response) > MAX_RESPONSE:
            raise _Escalate("response longer than 65538 bytes", give_up=True)
        if not reply.more:
            return bytes(x.response)
        x.out = Block.r_block(self._nr, nad=self.params.nad)  # Rule 5: acknowledge the chain
        return None

    def _on_r_block(self, x: _Exchange, reply: Block) -> None:
        if not x.receiving and x.more and reply.nr != self._ns:  # Rule 5: block acknowledged
            self._ns ^= 1
            x.offset += len(x.current.inf)
            x.current = x.out = self._next_i_block(x)
            x.errors = 0
            return
        x.errors += 1
        if not x.receiving and reply.nr == self._ns:  # the card asks for our I-block again
            if x.errors > self.params.retries:
                raise _Escalate(f"{x.errors} consecutive block errors")
            self.stats.retransmissions += 1
            x.out = x.current
        else:  # it did not understand our last block
            x.out = self._recover(x.out, RError.OTHER, x.errors)

    def _on_s_block(self, x: _Exchange, reply: Block) -> None:
        nad = self.params.nad
        if reply.is_s_of(SType.WTX, response=False):  # Rule 3: waiting time extension
            x.wtx_count += 1
            if x.wtx_count > MAX_WTX_PER_APDU:
                raise _Escalate("the card keeps asking for more time", give_up=True)
            self.stats.wtx += 1
            x.wait = self.params.bwt * max(1, reply.inf[0])
            x.out = Block.s_block(SType.WTX, response=True, inf=reply.inf, nad=nad)
        elif reply.is_s_of(SType.IFS, response=False) and 1 <= reply.inf[0] <= MAX_INF:
            self._ifsc = reply.inf[0]  # Rule 4: the card changes IFSC (for the blocks to come)
            x.out = Block.s_block(SType.IFS, response=True, inf=reply.inf, nad=nad)
        elif reply.is_s_of(SType.ABORT, response=False):  # Rule 9
            self.stats.aborts += 1
            if x.receiving:
                raise _Escalate("the card aborted its response chain", give_up=True)
            self._final_sent = False  # the card refused the chain instead of executing it
            self._answer_abort()
            self.stats.failures += 1
            raise T1TransportError(
                "the card aborted the command chain",
                command_delivered=False,
                resynchronised=False,
                aborted=True,
            )
        else:  # S(RESYNCH request) (only the interface device may send it), stray responses
            x.errors += 1
            x.out = self._recover(x.out, RError.OTHER, x.errors)


@dataclass
class _Exchange:
    """The host's progress through one APDU."""

    apdu: bytes
    wait: float
    current: Block = _NO_BLOCK  # the I-block in flight
    out: Block = _NO_BLOCK  # the next block to send
    offset: int = 0
    more: bool = False
    receiving: bool = False  # the card has started answering: our last I-block is acknowledged
    response: bytearray = field(default_factory=bytearray)
    errors: int = 0
    wtx_count: int = 0


def open_t1(
    card: CardLike,
    *,
    faults: FaultConfig | None = None,
    seed: int = 0,
    params: T1Params | None = None,
    processing_time: Callable[[bytes], float] | None = None,
    bitrate: int = 400_000,
) -> T1Connection:
    """``card`` behind a ``T1CardEndpoint`` on a fresh ``I2CLink``; returns the host side.
    The endpoint is ``conn.link.card_side``."""
    link = I2CLink(faults=faults, seed=seed, bitrate=bitrate)
    T1CardEndpoint(card, link, params=params, processing_time=processing_time)
    return T1Connection(link, params=params)

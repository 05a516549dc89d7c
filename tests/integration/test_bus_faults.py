"""Bus faults between host and secure element: the emulator card behind T=1 on a faulty I2C link.

An SCP03 session (SELECT, authenticate at level 33, GET DATA CPLC, key information, PUT KEY) at
1 %, 5 % and 20 % injected frame faults, several seeds, over ``T1Connection`` alone and under
``RetryingConnection``: every operation returns the right answer or raises ``TransportError``,
never a wrong answer and never another error; the card stays consistent (a clean connection
authenticates afterwards, and a key set is either wholly there or not at all). Then the retry
policy and the fail-safe helpers on their own, and the retry cost per fault rate (printed with
``-s``; the figures are virtual: frames and simulated seconds, not timings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import mean

import pytest

from iotid.apdu import ApduError, ApduFormatError
from iotid.host import SecurityDomainSession
from iotid.host.errors import BadResponseError
from iotid.host.resilience import (
    FailSafe,
    RetryingConnection,
    is_idempotent_read,
    is_secure_messaging,
)
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.spec.gp import TEST_KEY_VERSION
from iotid.transport.base import CardRemovedError, Connection, TransportError
from iotid.transport.i2c import Fault, FaultConfig, I2CLink
from iotid.transport.loopback import LoopbackConnection
from iotid.transport.t1 import Edc, T1CardEndpoint, T1Connection, T1Params, T1TransportError

UID = bytes.fromhex("0A0B0C0D0E0F10111213")
NEW_KVN = 0x31
NEW_KEYS = StaticKeys(
    enc=bytes(range(0x60, 0x70)), mac=bytes(range(0x70, 0x80)), dek=bytes(range(0x80, 0x90))
)
RATES = (0.01, 0.05, 0.20)
SEEDS = range(12)
ROUNDS = 4
OPS = ("select", "authenticate", "get_cplc", "get_key_information", "put_key")


def key_info(with_new: bool) -> dict[tuple[int, int], tuple[int, int]]:
    kvns = (TEST_KEY_VERSION, NEW_KVN) if with_new else (TEST_KEY_VERSION,)
    return {(kid, kvn): (0x88, 16) for kvn in kvns for kid in (1, 2, 3)}


@pytest.fixture(scope="module")
def reference() -> tuple[bytes, bytes]:
    """CPLC and key diversification data of a card with UID, over a clean loopback."""
    sd = SecurityDomainSession(LoopbackConnection(Card.create(None, uid=UID)))
    info = sd.authenticate(StaticKeys.gp_test_keys(), level=0x33)
    return sd.get_cplc().raw, info.key_diversification_data


@dataclass
class Trial:
    ok: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    failed_safe: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    frames: int = 0
    injected: int = 0
    virtual_s: float = 0.0
    t1_retransmissions: int = 0
    resyncs: int = 0
    retries: int = 0
    backoff: float = 0.0
    put_key_done: bool = False


class Script:
    """One host's session steps; each checks its answer the moment it comes."""

    def __init__(self, conn: Connection, reference: tuple[bytes, bytes], trial: Trial) -> None:
        self.conn = conn
        self.cplc, self.kdd = reference
        self.trial = trial
        self.sd: SecurityDomainSession | None = None
        self.new_key: bool | None = False  # None: unknown (PUT KEY failed safe); read it back

    def attempt(self, op: str) -> bool:
        try:
            getattr(self, op)()
        except TransportError:
            self.trial.failed_safe[op] += 1
            return False
        self.trial.ok[op] += 1
        return True

    def session(self) -> SecurityDomainSession:
        assert self.sd is not None
        return self.sd

    def select(self) -> None:
        self.sd = SecurityDomainSession(self.conn)

    def authenticate(self) -> None:
        info = self.session().authenticate(StaticKeys.gp_test_keys(), level=0x33)
        assert (info.kvn, info.level, info.key_diversification_data) == (0x30, 0x33, self.kdd)

    def get_cplc(self) -> None:
        assert self.session().get_cplc().raw == self.cplc

    def get_key_information(self) -> None:
        got = self.session().get_key_information()
        if self.new_key is None:  # PUT KEY failed safe earlier: all of it or none of it
            assert got in (key_info(False), key_info(True))
            self.new_key = got == key_info(True)
        else:
            assert got == key_info(self.new_key)

    def put_key(self) -> None:
        self.new_key = None
        self.session().put_key(NEW_KVN, NEW_KEYS)  # raises unless the KCVs come back right
        self.new_key = True

    def round(self) -> None:
        """SELECT, authenticate, read, and PUT KEY while the new key set is known absent; a
        failed step ends the round (the session is abandoned; the next round opens another)."""
        for op in ("select", "authenticate", "get_cplc", "get_key_information"):
            if not self.attempt(op):
                return
        if self.new_key is False:
            self.attempt("put_key")


def run_trial(
    rate: float,
    seed: int,
    *,
    retrying: bool,
    reference: tuple[bytes, bytes],
    params: T1Params | None = None,
    flip_bits: int = 1,
) -> Trial:
    """ROUNDS rounds of the session on one faulty link, then a check of the card's state."""
    cplc, _ = reference
    card = Card.create(None, uid=UID)
    link = I2CLink(faults=FaultConfig.uniform(rate, flip_bits=flip_bits), seed=seed)
    T1CardEndpoint(card, link, params=params)
    t1 = T1Connection(link, params=params)
    conn: Connection = (
        RetryingConnection(t1, sleep=link.clock.advance, base_delay=0.01) if retrying else t1
    )
    trial = Trial()
    script = Script(conn, reference, trial)
    for _ in range(ROUNDS):
        if t1.broken:
            t1.reset()  # the caller's decision: warm reset, then a new session
        script.round()

    # The card is consistent: a clean connection authenticates with the right keys.
    clean = SecurityDomainSession(LoopbackConnection(card))
    clean.authenticate(StaticKeys.gp_test_keys(), level=0x33)
    assert clean.get_cplc().raw == cplc
    present = clean.get_key_information()
    assert present in (key_info(False), key_info(True))
    assert script.new_key is None or present == key_info(script.new_key)
    if present == key_info(True):
        clean.authenticate(NEW_KEYS, kvn=NEW_KVN, level=0x33)
    trial.put_key_done = present == key_info(True)
    trial.frames = link.counters.frames
    trial.injected = link.counters.injected
    trial.virtual_s = link.clock.now
    trial.t1_retransmissions = t1.stats.retransmissions
    trial.resyncs = t1.stats.resyncs
    if isinstance(conn, RetryingConnection):
        trial.retries = conn.stats.retries
        trial.backoff = conn.stats.backoff
    return trial


@pytest.mark.parametrize("retrying", [False, True], ids=["t1", "t1+retry"])
@pytest.mark.parametrize("rate", RATES, ids=[f"{r:.0%}" for r in RATES])
@pytest.mark.parametrize("seed", SEEDS)
def test_right_answer_or_transport_error_never_a_wrong_one(
    seed: int, rate: float, retrying: bool, reference: tuple[bytes, bytes]
) -> None:
    trial = run_trial(rate, seed, retrying=retrying, reference=reference)
    assert sum(trial.ok.values()) > 0
    assert trial.frames > 0


@pytest.mark.parametrize("seed", range(4))
def test_crc_catches_multi_bit_damage(seed: int, reference: tuple[bytes, bytes]) -> None:
    """Three flipped bits per damaged frame: an LRC can miss some of those (two flips in one bit
    column), the CRC cannot; with CRC the guarantee holds as with single flips."""
    params = T1Params(edc=Edc.CRC)
    trial = run_trial(0.2, seed, retrying=True, reference=reference, params=params, flip_bits=3)
    assert trial.injected > 0


def test_fault_free_session_costs_no_recovery(reference: tuple[bytes, bytes]) -> None:
    trial = run_trial(0.0, 0, retrying=True, reference=reference)
    assert sum(trial.failed_safe.values()) == 0
    assert trial.ok["put_key"] == 1 and trial.put_key_done
    assert trial.t1_retransmissions == trial.resyncs == trial.retries == 0
    assert trial.injected == 0


def test_retry_cost_per_fault_rate(reference: tuple[bytes, bytes]) -> None:
    """The price of recovery: extra frames and virtual time against the fault-free run."""
    base = run_trial(0.0, 0, retrying=True, reference=reference)
    rows = []
    extra_by_rate = {}
    for rate in RATES:
        trials = [run_trial(rate, s, retrying=True, reference=reference) for s in SEEDS]
        ops = sum(sum(t.ok.values()) + sum(t.failed_safe.values()) for t in trials)
        failed = sum(sum(t.failed_safe.values()) for t in trials)
        frames = sum(t.frames for t in trials) / len(trials)
        vtime = sum(t.virtual_s for t in trials) / len(trials)
        extra_by_rate[rate] = frames / base.frames - 1
        rows.append(
            f"{rate:>5.0%} | ops ok {ops - failed}/{ops} ({(ops - failed) / ops:.1%}) | "
            f"frames x{frames / base.frames:.2f} | virtual {vtime * 1000:.0f} ms "
            f"(x{vtime / base.virtual_s:.1f}) "
            f"| T=1 re-sent blocks/trial {mean(t.t1_retransmissions for t in trials):.1f}"
            f" | resyncs/trial {mean(t.resyncs for t in trials):.2f}"
            f" | APDU retries/trial {mean(t.retries for t in trials):.2f}"
            f" | PUT KEY landed {sum(t.put_key_done for t in trials)}/{len(trials)}"
        )
    print(f"\nfault-free: {base.frames} frames, {base.virtual_s * 1000:.1f} ms virtual")
    print("\n".join(rows))
    assert extra_by_rate[0.20] > extra_by_rate[0.01] >= 0


# -- the retry rule on its own -----------------------------------------------------------------
SELECT = bytes.fromhex("00A4040008A000000151000000")
GET_DATA = bytes.fromhex("80CA9F7F00")
PUT_KEY = bytes.fromhex("80D8000100")
WRAPPED = bytes.fromhex("84CA9F7F08") + bytes(8)


class FlakyConnection:
    """Fails the first ``failures`` transmits with ``error``, then answers 9000."""

    def __init__(self, failures: int, error: TransportError) -> None:
        self.failures = failures
        self.error = error
        self.sent: list[bytes] = []
        self.closed = False

    @property
    def atr(self) -> bytes:
        return b"\x3b\x00"

    def transmit(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        if self.failures:
            self.failures -= 1
            raise self.error
        return b"\x90\x00"

    def close(self) -> None:
        self.closed = True


def _undelivered() -> T1TransportError:
    return T1TransportError("x", command_delivered=False, resynchronised=True)


def _delivered() -> T1TransportError:
    return T1TransportError("x", command_delivered=True, resynchronised=True)


@pytest.mark.parametrize(
    ("apdu", "error", "resent"),
    [
        (PUT_KEY, _undelivered(), True),  # never reached the card: any APDU may go again
        (WRAPPED, _undelivered(), True),
        (SELECT, _delivered(), True),  # may have run: only idempotent ones
        (GET_DATA, _delivered(), True),
        (PUT_KEY, _delivered(), False),
        (WRAPPED, _delivered(), False),  # the SCP03 state moved on: never replayed
        (GET_DATA, TransportError("reader"), True),  # unknown transports: assume delivered
        (PUT_KEY, TransportError("reader"), False),
        (GET_DATA, CardRemovedError("gone"), False),
        (
            GET_DATA,
            T1TransportError("x", command_delivered=False, resynchronised=False, broken=True),
            False,
        ),
        (
            GET_DATA,
            T1TransportError("x", command_delivered=False, resynchronised=False, aborted=True),
            False,
        ),
    ],
)
def test_resend_rule(apdu: bytes, error: TransportError, resent: bool) -> None:
    inner = FlakyConnection(1, error)
    slept: list[float] = []
    conn = RetryingConnection(inner, sleep=slept.append)
    if resent:
        assert conn.transmit(apdu) == b"\x90\x00"
        assert inner.sent == [apdu, apdu]
        assert conn.stats.retries == 1 and slept == [conn.base_delay]
    else:
        with pytest.raises(TransportError):
            conn.transmit(apdu)
        assert inner.sent == [apdu]
        assert conn.stats.refused == 1 and slept == []


def test_backoff_is_exponential_bounded_and_counted() -> None:
    inner = FlakyConnection(10, _undelivered())
    slept: list[float] = []
    conn = RetryingConnection(
        inner, max_retries=4, base_delay=0.1, factor=2.0, max_delay=0.5, sleep=slept.append
    )
    with pytest.raises(T1TransportError):
        conn.transmit(GET_DATA)
    assert slept == pytest.approx([0.1, 0.2, 0.4, 0.5])
    assert conn.stats.attempts == 5 and conn.stats.retries == 4 and conn.stats.exhausted == 1
    assert conn.stats.resyncs == 5
    assert conn.stats.backoff == pytest.approx(1.2)
    assert conn.atr == b"\x3b\x00"
    conn.close()
    assert inner.closed
    with pytest.raises(ValueError, match="factor"):
        RetryingConnection(inner, factor=0.5)


def test_caller_predicate_and_closed_connection() -> None:
    inner = FlakyConnection(1, _delivered())
    conn = RetryingConnection(inner, idempotent=lambda apdu: apdu[1] == 0xD8, sleep=lambda s: None)
    assert conn.transmit(PUT_KEY) == b"\x90\x00"  # the caller vouches for it
    inner = FlakyConnection(1, _delivered())
    inner.closed = True
    conn = RetryingConnection(inner, sleep=lambda s: None)
    with pytest.raises(TransportError):
        conn.transmit(GET_DATA)


def test_idempotency_predicate() -> None:
    assert is_idempotent_read(SELECT)
    assert is_idempotent_read(GET_DATA)
    assert is_idempotent_read(bytes.fromhex("80F2800200"))  # GET STATUS, first occurrence
    assert not is_idempotent_read(bytes.fromhex("80F2800300"))  # ... next occurrence
    assert is_idempotent_read(bytes.fromhex("8050300008") + bytes(8))  # INITIALIZE UPDATE
    assert not is_idempotent_read(bytes.fromhex("00C0000000"))  # GET RESPONSE
    assert not is_idempotent_read(bytes.fromhex("90CA9F7F00"))  # a chained piece
    assert not is_idempotent_read(WRAPPED)
    assert not is_idempotent_read(PUT_KEY)
    assert not is_idempotent_read(bytes.fromhex("FFCA0000"))
    assert not is_idempotent_read(b"\x00\xa4")
    assert is_secure_messaging(0x84) and is_secure_messaging(0x0C)
    assert is_secure_messaging(0x60) and not is_secure_messaging(0x40)
    assert not is_secure_messaging(0x80)


def test_t1_resync_over_the_real_card_is_retried_only_when_safe() -> None:
    """The whole stack: a lost answer to SELECT after RESYNCH is re-sent; one to a wrapped
    command is not, and a new session works afterwards."""
    card = Card.create(None, uid=UID)
    link = I2CLink()
    params = T1Params(ifsd=32)  # no S(IFS) exchange, so the drops below hit the answers
    T1CardEndpoint(card, link, params=params)
    conn = RetryingConnection(T1Connection(link, params=params), sleep=link.clock.advance)
    sd = SecurityDomainSession(conn)
    sd.authenticate(StaticKeys.gp_test_keys(), level=0x33)
    link.card.fail_next(*[Fault.DROP] * 4)  # the answer to the wrapped GET DATA, four times
    with pytest.raises(T1TransportError) as info:
        sd.get_cplc()
    assert info.value.command_delivered and conn.stats.refused == 1
    link.card.fail_next(*[Fault.DROP] * 4)  # the answer to SELECT
    sd = SecurityDomainSession(conn)
    assert conn.stats.retries == 1
    sd.authenticate(StaticKeys.gp_test_keys(), level=0x33)
    assert len(sd.get_cplc().raw) == 42


# -- fail-safe answers --------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    valid: bool
    reason: str = ""


def _raise(exc: Exception) -> Callable[[], Verdict]:
    def fn() -> Verdict:
        raise exc

    return fn


@pytest.mark.parametrize(
    "exc",
    [
        TransportError("bus"),
        ApduError(0x6982),
        BadResponseError("R-MAC"),
        ApduFormatError("bad TLV"),
    ],
    ids=["transport", "status-word", "host", "malformed"],
)
def test_fail_safe_answers(exc: Exception) -> None:
    fs = FailSafe()
    assert fs.credential_or_none(_raise(exc)) is None
    verdict = fs.firmware_verdict_or_invalid(_raise(exc), lambda why: Verdict(False, why))
    assert verdict.valid is False and verdict.reason
    assert fs.failures == 2 and fs.last_reason
    assert fs.credential_or_none(lambda: "cert") == "cert"
    assert fs.firmware_verdict_or_invalid(lambda: Verdict(True), lambda w: Verdict(False)).valid


def test_fail_safe_lets_programming_errors_through() -> None:
    with pytest.raises(TypeError):
        FailSafe().credential_or_none(_raise(TypeError("bug")))


def test_firmware_never_valid_on_a_bus_error_over_t1() -> None:
    """A verification whose answer is lost on the bus comes back INVALID, never VALID."""
    card = Card.create(None, uid=UID)
    link = I2CLink(faults=FaultConfig(drop=1.0))
    T1CardEndpoint(card, link)
    conn = RetryingConnection(T1Connection(link), sleep=link.clock.advance)

    def verify() -> Verdict:
        conn.transmit(GET_DATA)  # stands in for the firmware session's FINISH
        return Verdict(True)

    fs = FailSafe()
    assert fs.firmware_verdict_or_invalid(verify, lambda why: Verdict(False, why)) == Verdict(
        False, fs.last_reason or ""
    )

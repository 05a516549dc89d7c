"""What the host does when the bus misbehaves: bounded, safe retries, then a fail-safe answer.

Scope:
- ``RetryingConnection``: a ``Connection`` wrapper that re-sends a WHOLE APDU after a
  ``TransportError``, with exponential backoff (injectable ``sleep``), at most ``max_retries``
  times, and only when a second delivery cannot have a different effect (``may_resend``);
- ``is_idempotent_read``: the default predicate for APDUs whose repetition is harmless;
- ``FailSafe``: run a host call and turn any bus, status-word, host or malformed-answer failure
  into the safe answer: "no credential" (None) or the caller's INVALID firmware verdict. Never
  VALID on error.

The re-send rule. T=1 already retransmits lost or damaged blocks without re-executing anything
(``iotid.transport.t1``); an error reaches this layer only when block recovery gave up. Then:
1. if the transport proves the command never reached the card (``T1TransportError`` with
   ``command_delivered`` False: its final I-block never went on the bus, or the card aborted the
   chain), re-sending is a first delivery: always allowed;
2. otherwise the card may have executed it (after S(RESYNCH) the card's T=1 state is reset and
   nobody knows whether the last I-block was processed; other transports say nothing). Then:
   - never for a secure-messaging APDU (CLA SM bits): the card's SCP03 state (MAC chaining
     value, encryption counter) moved on if it ran; the replay would only earn 6982 and kill the
     session. The caller re-opens the session instead;
   - never for command chaining (CLA b5) or GET RESPONSE: they consume card-side state;
   - yes if the caller's ``idempotent(apdu)`` predicate says so (default: SELECT, GET DATA,
     a first GET STATUS, INITIALIZE UPDATE; callers add commands whose repetition the card's own
     state machine refuses, e.g. a second PROVISION answered 6985, never executed twice);
   - else: raise.
Not retried at all: ``CardRemovedError``, a broken T=1 link (``T1TransportError.broken``: needs a
reset, which loses the card's selection and secure channel, so only the caller may do it), a
chain the card refused with S(ABORT) (``aborted``: it would refuse it again), a closed
connection.

Not in scope: the block-level rules (``iotid.transport.t1``), re-opening sessions, what a
firmware verdict is (``FailSafe`` takes a factory, so this module needs no firmware import).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from iotid.apdu import ApduError
from iotid.host.errors import HostError
from iotid.spec.gp import GpIns
from iotid.spec.iso7816 import (
    CLA_CHAINING,
    CLA_PROPRIETARY,
    CLA_SECURE_MESSAGING,
    Ins,
)
from iotid.transport.base import CardRemovedError, Connection, TransportError
from iotid.transport.t1 import T1TransportError

__all__ = [
    "FAIL_SAFE_ERRORS",
    "FailSafe",
    "InvalidVerdict",
    "RetryStats",
    "RetryingConnection",
    "is_idempotent_read",
    "is_secure_messaging",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")
V = TypeVar("V")
V_co = TypeVar("V_co", covariant=True)

# ISO/IEC 7816-4 §5.4.1 CLA coding. First interindustry (0x00-0x3F, and GP's 0x80-0xBF):
# b4-b3 secure messaging (GP uses b3 = 0x04), b5 chaining. Further interindustry (0x40-0x7F):
# b6 secure messaging, b5 chaining.
_FURTHER_INTERINDUSTRY = 0x40
_SM_FIRST = CLA_SECURE_MESSAGING | 0x08
_SM_FURTHER = 0x20
#: GPC 2.3.1 §11.4.2: GET STATUS P2 b1 set = "next occurrence" (continues card-side state).
_GET_STATUS_NEXT = 0x01


def is_secure_messaging(cla: int) -> bool:
    """Whether ``cla`` announces secure messaging (ISO 7816-4 §5.4.1; GP CLA 84)."""
    if _FURTHER_INTERINDUSTRY <= cla < CLA_PROPRIETARY:
        return bool(cla & _SM_FURTHER)
    return bool(cla & _SM_FIRST)


def is_idempotent_read(apdu: bytes) -> bool:
    """Plain APDUs whose second execution changes nothing the first did not: SELECT (ISO 7816-4
    §11.2.2; it also ends a secure channel, once or twice alike), GET DATA (§11.5.3), GET STATUS
    for the first occurrence (GPC §11.4), INITIALIZE UPDATE (GPC Amd D §7.1: a fresh challenge,
    and the host uses whichever answer it receives). Not chained pieces, not GET RESPONSE."""
    if len(apdu) < 4:
        return False
    cla, ins, _p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
    if cla == 0xFF or cla & CLA_CHAINING or is_secure_messaging(cla):
        return False
    if ins in (Ins.SELECT, GpIns.GET_DATA, GpIns.GET_DATA_ODD):
        return True
    if ins == GpIns.GET_STATUS:
        return not p2 & _GET_STATUS_NEXT
    return ins == GpIns.INITIALIZE_UPDATE and bool(cla & CLA_PROPRIETARY)


@dataclass
class RetryStats:
    """``attempts``: transmits tried; ``retries``: re-sends; ``resyncs``: failures that came
    with a T=1 resynchronisation; ``refused``: failures not re-sent because unsafe;
    ``exhausted``: failures still there after ``max_retries``; ``backoff``: seconds slept."""

    attempts: int = 0
    retries: int = 0
    resyncs: int = 0
    refused: int = 0
    exhausted: int = 0
    backoff: float = 0.0


class RetryingConnection(Connection):
    """``inner`` with bounded, safe whole-APDU retries (rule in the module docstring).

    Backoff before retry n (1-based): ``min(max_delay, base_delay * factor**(n-1))`` seconds,
    slept with ``sleep`` (inject a fake in tests; ``time.sleep`` by default).
    """

    def __init__(
        self,
        inner: Connection,
        *,
        idempotent: Callable[[bytes], bool] = is_idempotent_read,
        max_retries: int = 3,
        base_delay: float = 0.01,
        factor: float = 2.0,
        max_delay: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_retries < 0 or base_delay < 0 or factor < 1 or max_delay < 0:
            raise ValueError("retries and delays must be non-negative, factor at least 1")
        self.inner = inner
        self.idempotent = idempotent
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.factor = factor
        self.max_delay = max_delay
        self._sleep = sleep
        self.stats = RetryStats()

    def __repr__(self) -> str:
        return f"RetryingConnection({self.inner!r}, max_retries={self.max_retries})"

    @property
    def atr(self) -> bytes:
        return self.inner.atr

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> RetryingConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def backoff(self, retry: int) -> float:
        """Seconds to wait before re-send number ``retry`` (1-based)."""
        return min(self.max_delay, self.base_delay * self.factor ** (retry - 1))

    def may_resend(self, apdu: bytes, exc: TransportError) -> bool:
        """Whether ``apdu`` may go again after ``exc`` (module docstring, "The re-send rule")."""
        if isinstance(exc, CardRemovedError) or getattr(self.inner, "closed", False):
            return False
        if isinstance(exc, T1TransportError):
            if exc.broken or exc.aborted:
                return False
            if not exc.command_delivered:
                return True
        if len(apdu) < 4 or is_secure_messaging(apdu[0]):
            return False
        return self.idempotent(apdu)

    def transmit(self, apdu: bytes) -> bytes:
        retry = 0
        while True:
            self.stats.attempts += 1
            try:
                return self.inner.transmit(apdu)
            except TransportError as exc:
                if isinstance(exc, T1TransportError) and exc.resynchronised:
                    self.stats.resyncs += 1
                if not self.may_resend(apdu, exc):
                    self.stats.refused += 1
                    raise
                if retry >= self.max_retries:
                    self.stats.exhausted += 1
                    raise
                retry += 1
                delay = self.backoff(retry)
                _log.debug("bus error (%s); re-send %d in %.3f s", type(exc).__name__, retry, delay)
                self.stats.retries += 1
                self.stats.backoff += delay
                self._sleep(delay)


class InvalidVerdict(Protocol[V_co]):
    """Builds the caller's INVALID firmware verdict; ``reason`` says why (never a secret)."""

    def __call__(self, reason: str) -> V_co: ...


#: What fails safe: the bus, a status word, a host-side check, a malformed answer a parser
#: rejected (``ValueError``; ``ApduFormatError`` is one). Other programming errors propagate.
FAIL_SAFE_ERRORS: tuple[type[Exception], ...] = (TransportError, ApduError, HostError, ValueError)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ApduError):
        return f"the card answered {exc.sw:04X}"
    return f"{type(exc).__name__}: {exc}"


class FailSafe:
    """Fail-safe wrappers for the two decisions a device must never get wrong on an error.

    ``failures`` counts calls that fell back; ``last_reason`` says why the last one did.
    """

    def __init__(self) -> None:
        self.failures = 0
        self.last_reason: str | None = None

    def __repr__(self) -> str:
        return f"FailSafe(failures={self.failures})"

    def _fell_back(self, what: str, exc: Exception) -> None:
        self.failures += 1
        self.last_reason = _reason(exc)
        _log.warning("%s failed safe: %s", what, self.last_reason)

    def credential_or_none(self, fn: Callable[[], T]) -> T | None:
        """``fn()``, or None ("no credential available") on any ``FAIL_SAFE_ERRORS``."""
        try:
            return fn()
        except FAIL_SAFE_ERRORS as exc:
            self._fell_back("credential lookup", exc)
            return None

    def firmware_verdict_or_invalid(self, fn: Callable[[], V], invalid: InvalidVerdict[V]) -> V:
        """``fn()``, or ``invalid(reason)`` on any ``FAIL_SAFE_ERRORS``: never VALID then."""
        try:
            return fn()
        except FAIL_SAFE_ERRORS as exc:
            self._fell_back("firmware verification", exc)
            return invalid(self.last_reason or "error")

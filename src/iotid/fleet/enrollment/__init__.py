"""Enrollment (DESIGN.md section 9): nonce -> attestation quote -> typed verdict.

Scope today: the pure-logic quote verifier (:class:`QuoteVerifier`, with :class:`Verdict` and
:class:`Reason` in ``verdict``, the quote's shape checks in ``quote``) and the nonce store
protocol with its in-memory implementation (``nonces``). Not yet here: the slice's service,
repository and API, the client certificate issuance, rotation proofs.
"""

from __future__ import annotations

from iotid.fleet.enrollment.nonces import (
    DEFAULT_TTL,
    InMemoryNonceStore,
    NonceCapacityError,
    NonceState,
    NonceStore,
)
from iotid.fleet.enrollment.quote import MAX_QUOTE_LEN
from iotid.fleet.enrollment.verdict import Reason, Verdict
from iotid.fleet.enrollment.verifier import QuoteVerifier

__all__ = [
    "DEFAULT_TTL",
    "MAX_QUOTE_LEN",
    "InMemoryNonceStore",
    "NonceCapacityError",
    "NonceState",
    "NonceStore",
    "QuoteVerifier",
    "Reason",
    "Verdict",
]

"""Enrollment (DESIGN.md section 9): nonce -> attestation quote -> typed verdict -> certificate.

Modules: ``verifier`` (:class:`QuoteVerifier`, pure logic, callables injected; with a
:class:`RegistryCard` lookup it checks the registry's current key, epoch and revocation state),
``verdict`` (:class:`Verdict`, :class:`Reason`), ``quote`` (shape checks), ``nonces`` (the
:class:`NonceStore` protocol, an in-memory store), ``dbnonces`` (the database store every fleet
process shares), ``repository`` (the slice's SQL), ``service`` (``EnrollmentService``: enrollment
and renewal in one transaction, ``EnrollmentRefused``), ``api`` (operator API routes, no token)
and ``gateway`` (renewal over the device gateway). This package re-exports the pure parts only;
import the service, API and gateway modules by name (they need the database layer).
Not here: rotation proofs (``iotid.fleet.rotation``), revocation (``iotid.fleet.revocation``).
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
from iotid.fleet.enrollment.verifier import QuoteVerifier, RegistryCard

__all__ = [
    "DEFAULT_TTL",
    "MAX_QUOTE_LEN",
    "InMemoryNonceStore",
    "NonceCapacityError",
    "NonceState",
    "NonceStore",
    "QuoteVerifier",
    "Reason",
    "RegistryCard",
    "Verdict",
]

"""The revocation slice: revoke devices and batches, propagate it, answer OCSP, publish CRLs.

Scope: re-exports of :mod:`.service` (:class:`RevocationService`), :mod:`.index`
(:class:`RevocationIndex`, :class:`RevokedEvent`), :mod:`.follower` (:class:`RevocationFollower`),
:mod:`.ocsp` (:class:`OcspResponder`) and :mod:`.crl` (:class:`CrlPublisher`). The HTTP router is
in :mod:`.api` (imported by the app, not here, so the gateway can use the index without FastAPI).

Not in scope: closing gateway connections (the gateway consumes the follower's events).
"""

from __future__ import annotations

from iotid.fleet.revocation.crl import CRL_NEXT_UPDATE, CrlPublisher
from iotid.fleet.revocation.follower import RevocationFollower, postgres_dsn
from iotid.fleet.revocation.index import RevocationIndex, RevokedEvent
from iotid.fleet.revocation.ocsp import OCSP_NEXT_UPDATE, OcspResponder
from iotid.fleet.revocation.repository import CHANNEL
from iotid.fleet.revocation.service import (
    BATCH_REASONS,
    DEVICE_REASONS,
    RevocationResult,
    RevocationService,
)

__all__ = [
    "BATCH_REASONS",
    "CHANNEL",
    "CRL_NEXT_UPDATE",
    "DEVICE_REASONS",
    "OCSP_NEXT_UPDATE",
    "CrlPublisher",
    "OcspResponder",
    "RevocationFollower",
    "RevocationIndex",
    "RevocationResult",
    "RevocationService",
    "RevokedEvent",
    "postgres_dsn",
]

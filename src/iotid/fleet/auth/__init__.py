"""Operator API authentication: bearer tokens with roles, and the FastAPI role dependency.

Scope: re-exports of :mod:`iotid.fleet.auth.tokens`. Not in scope: device authentication
(mutual TLS at the gateway), the CLI that creates tokens.
"""

from __future__ import annotations

from iotid.fleet.auth.tokens import (
    DB_STATE_KEY,
    NewToken,
    Principal,
    Role,
    authenticate,
    create_token,
    require,
)

__all__ = [
    "DB_STATE_KEY",
    "NewToken",
    "Principal",
    "Role",
    "authenticate",
    "create_token",
    "require",
]

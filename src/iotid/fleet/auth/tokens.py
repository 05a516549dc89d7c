"""Operator API tokens: creation, bearer authentication and role checks.

Scope:

- :func:`create_token`: a random 256-bit secret (``secrets.token_urlsafe``) returned once in a
  :class:`NewToken`; the registry keeps only its SHA-256 (``iotid.fleet.models.token``), a role
  and an expiry.
- :func:`authenticate`: bearer secret -> :class:`Principal`; raises :class:`Unauthenticated` for a
  missing, unknown, expired or revoked token (one message for all: the caller learns nothing about
  which tokens exist).
- :func:`require`: a FastAPI dependency that authenticates the ``Authorization: Bearer`` header
  against the :class:`Database` in ``app.state`` and raises :class:`Forbidden` for a role not in
  the allowed list.

Not in scope: the CLI (``iotid fleet token create``), revocation of tokens over HTTP, device
authentication (mutual TLS at the gateway), rendering errors (the app's exception handler).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from iotid.fleet.db import Database
from iotid.fleet.errors import Forbidden, Unauthenticated
from iotid.fleet.models.base import utcnow
from iotid.fleet.models.token import ApiToken, Role

__all__ = [
    "DB_STATE_KEY",
    "NewToken",
    "Principal",
    "Role",
    "authenticate",
    "create_token",
    "require",
]

#: ``app.state`` attribute holding the fleet :class:`Database` the dependency authenticates with.
DB_STATE_KEY = "fleet_db"
#: Bytes of randomness in a secret (256 bits).
_SECRET_BYTES = 32
#: Longest bearer value looked at (a token_urlsafe(32) is 43 characters).
_MAX_BEARER = 256
_REFUSED = "missing, unknown, expired or revoked API token"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's id and role. ``actor`` is what the audit log records."""

    token_id: int
    role: Role

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}"


@dataclass(frozen=True)
class NewToken:
    """A token just created. ``secret`` is shown once and never stored; the repr hides it."""

    token_id: int
    role: Role
    expires_at: dt.datetime
    secret: str = field(repr=False)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_token(
    db: Database, role: Role | str, ttl: dt.timedelta, *, now: dt.datetime | None = None
) -> NewToken:
    """A new token with ``role`` valid for ``ttl`` (must be positive)."""
    wanted = Role(role)
    if ttl <= dt.timedelta(0):
        raise ValueError("a token's lifetime must be positive")
    created = now or utcnow()
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    with db.transaction() as session:
        row = ApiToken(
            secret_sha256=_digest(secret),
            role=wanted,
            created_at=created,
            expires_at=created + ttl,
        )
        session.add(row)
        session.flush()
        return NewToken(token_id=row.id, role=wanted, expires_at=row.expires_at, secret=secret)


def authenticate(db: Database, bearer: str | None, *, now: dt.datetime | None = None) -> Principal:
    """The principal behind ``bearer``, or :class:`Unauthenticated`."""
    if not bearer or len(bearer) > _MAX_BEARER or not bearer.isascii():
        raise Unauthenticated("auth.unauthenticated", _REFUSED)
    digest = _digest(bearer)
    with db.transaction(write=False) as session:
        row = session.execute(
            select(ApiToken).where(ApiToken.secret_sha256 == digest)
        ).scalar_one_or_none()
        if row is None or not hmac.compare_digest(row.secret_sha256, digest):
            raise Unauthenticated("auth.unauthenticated", _REFUSED)
        if row.revoked_at is not None or row.expires_at <= (now or utcnow()):
            raise Unauthenticated("auth.unauthenticated", _REFUSED)
        return Principal(token_id=row.id, role=Role(row.role))


_bearer_scheme = HTTPBearer(auto_error=False, description="An operator API token")


def require(*roles: Role) -> Callable[..., Principal]:
    """A FastAPI dependency admitting a valid token whose role is one of ``roles``.

    No roles means any role. Unauthenticated (401) comes before Forbidden (403).
    """
    allowed: Collection[Role] = frozenset(roles or Role)

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
    ) -> Principal:
        db = cast(Database, getattr(request.app.state, DB_STATE_KEY))
        principal = authenticate(db, None if credentials is None else credentials.credentials)
        if principal.role not in allowed:
            raise Forbidden("auth.forbidden", f"role {principal.role.value} may not do this")
        return principal

    return dependency

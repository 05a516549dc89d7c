"""Operator API tokens: a role, an expiry and the SHA-256 of the secret (never the secret).

Scope: the :class:`ApiToken` table and the :class:`Role` enum (``admin``, ``operator``,
``auditor``). The random secret is shown once at creation; only its SHA-256 is stored, so a
database dump yields no usable credential. Tokens can be revoked by setting ``revoked_at``.

Not in scope: creating and checking tokens, role rules (``iotid.fleet.auth.tokens``).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import Enum, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from iotid.fleet.models.base import Base, UTCDateTime, utcnow

__all__ = ["ROLE_TYPE", "ApiToken", "Role"]


class Role(StrEnum):
    ADMIN = "admin"
    OPERATOR = "operator"
    AUDITOR = "auditor"


ROLE_TYPE = Enum(
    Role,
    name="token_role",
    native_enum=False,  # VARCHAR + CHECK on both back ends, like device states
    create_constraint=True,
    length=16,
    values_callable=lambda roles: [r.value for r in roles],
    validate_strings=True,
)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Lower-case hex SHA-256 of the bearer secret.
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(ROLE_TYPE)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def __repr__(self) -> str:  # the hash is not secret, but it is no business of a log either
        return f"ApiToken(id={self.id}, role={self.role!s})"

"""Single-use, short-lived nonces (enrollment and rotation challenges).

Scope: the :class:`Nonce` table. A nonce is consumed by setting ``consumed_at`` under a row lock,
in the same transaction as whatever it authorises; an expired or consumed nonce is refused.

Not in scope: issuing, consuming and purging nonces (the enrollment and rotation slices).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from iotid.fleet.models.base import Base, UTCDateTime, utcnow

__all__ = ["Nonce"]


class Nonce(Base):
    __tablename__ = "nonces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The challenge, hex or base64url; unique so a value can never be issued twice.
    value: Mapped[str] = mapped_column(String(128), unique=True)
    #: What the nonce may be used for (``enroll``, ``rotate``, ...): one purpose only.
    purpose: Mapped[str] = mapped_column(String(32))
    #: The device it was issued to, when known at issue time (upper-case hex UID).
    device_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    consumed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def __repr__(self) -> str:
        return f"Nonce(purpose={self.purpose!r}, consumed={self.consumed_at is not None})"

"""Domain errors of the fleet: what a service raises, carrying its HTTP status and a reason code.

Scope: one exception hierarchy for every fleet slice. A :class:`DomainError` has an HTTP
``status``, a stable machine-readable ``code`` (lower-case dotted words, e.g.
``device.wrong_state``: clients and tests match on it, so it never changes once published) and a
human ``message``. One handler in the API renders them (``{"error": code, "message": ...}`` with the
status); services never build HTTP responses themselves (DESIGN.md section 3, Polar/Warehouse).

Messages are public: they name the check that failed and the public identifiers involved (UID,
batch name, state), never key material, tokens, nonces' secrets or database internals.

Not in scope: rendering (the API layer), authentication itself (the token slice), logging.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import ClassVar

__all__ = [
    "Conflict",
    "DomainError",
    "Forbidden",
    "InvalidInput",
    "NotFound",
    "Unauthenticated",
    "Unavailable",
]

_CODE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")


class DomainError(Exception):
    """A refusal a client can act on: ``status`` (HTTP), ``code`` (stable) and ``message``;
    ``extra``: further public fields the body carries (e.g. enrollment's ``reason``)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: Mapping[str, str | int] | None = None,
    ) -> None:
        if _CODE.fullmatch(code) is None:
            raise ValueError(f"reason code {code!r} must be lower-case dotted words")
        HTTPStatus(status)  # a real status code, or ValueError
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra: dict[str, str | int] = {
            k: v for k, v in (extra or {}).items() if k not in ("error", "message", "status")
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r})"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, str | int]:
        """The body the API renders."""
        return {**self.extra, "status": self.status, "code": self.code, "message": self.message}


class _StatusError(DomainError):
    """A DomainError whose subclass fixes the status."""

    STATUS: ClassVar[int]

    def __init__(self, code: str, message: str) -> None:
        super().__init__(self.STATUS, code, message)


class InvalidInput(_StatusError):  # noqa: N818 (HTTP vocabulary, as the API names them)
    """The request is well-formed HTTP but its content is refused (bad manifest, bad UID, ...)."""

    STATUS = HTTPStatus.UNPROCESSABLE_ENTITY.value


class Unauthenticated(_StatusError):  # noqa: N818 (HTTP vocabulary, as the API names them)
    """No credential, or one that is unknown, expired or revoked."""

    STATUS = HTTPStatus.UNAUTHORIZED.value


class Forbidden(_StatusError):  # noqa: N818 (HTTP vocabulary, as the API names them)
    """The caller is known but may not do this (role, or another device's data)."""

    STATUS = HTTPStatus.FORBIDDEN.value


class NotFound(_StatusError):  # noqa: N818 (HTTP vocabulary, as the API names them)
    """The named object does not exist (or the caller may not learn that it does)."""

    STATUS = HTTPStatus.NOT_FOUND.value


class Conflict(_StatusError):  # noqa: N818 (HTTP vocabulary, as the API names them)
    """The request contradicts the current state (wrong device state, batch already different)."""

    STATUS = HTTPStatus.CONFLICT.value


class Unavailable(_StatusError):  # noqa: N818 (HTTP vocabulary, as the API names them)
    """A dependency (database, issuing CA) cannot serve now; the client may retry."""

    STATUS = HTTPStatus.SERVICE_UNAVAILABLE.value

"""Dashboard sessions: the operator's API token in a cookie, roles, and CSRF tokens.

Scope:

- the session cookie :data:`SESSION_COOKIE` holds the operator API token the operator pasted on
  the login page (``iotid fleet token create``); it is ``HttpOnly``, ``SameSite=Strict``,
  scoped to ``/dashboard``, and ``Secure`` when the request came over https. Every request
  authenticates it again with ``iotid.fleet.auth.authenticate`` (expiry and token revocation
  bite at once; the dashboard keeps no session state of its own);
- CSRF: a form post must carry :func:`csrf_token` of the session, an HMAC-SHA256 (``cryptography``)
  keyed with the session's token over a fixed label. Only someone who can read the HttpOnly
  cookie (or a page the dashboard rendered for that session) can produce it, it needs no server
  state, and it holds across several fleet processes behind one address (a per-process secret
  would not). Compared in constant time;
- the login form, which has no session yet, uses a double-submit token: a random value
  (``secrets``) in the short-lived :data:`LOGIN_COOKIE` and in the form must match;
- :data:`VIEWERS` (every role, auditor upwards) and :data:`REVOKERS` (operator, admin).

Not in scope: creating tokens, rendering pages (``pages``), what a role may do in the API.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from typing import cast

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from fastapi import Request, Response

from iotid.fleet.auth import DB_STATE_KEY, Principal, Role, authenticate
from iotid.fleet.db import Database
from iotid.fleet.errors import Unauthenticated

__all__ = [
    "COOKIE_PATH",
    "LOGIN_COOKIE",
    "REVOKERS",
    "SESSION_COOKIE",
    "VIEWERS",
    "check_token",
    "clear_session",
    "csrf_token",
    "new_login_token",
    "principal_of",
    "session_secret",
    "set_login_cookie",
    "set_session",
]

SESSION_COOKIE = "iotid_dashboard"
LOGIN_COOKIE = "iotid_dashboard_login"
COOKIE_PATH = "/dashboard"
VIEWERS = frozenset(Role)
REVOKERS = frozenset({Role.OPERATOR, Role.ADMIN})
_CSRF_LABEL = b"iotid-dashboard-csrf-v1"
#: Longest token value looked at (a real one is 43 characters).
_MAX_TOKEN = 256
_LOGIN_TTL_S = 15 * 60


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def session_secret(request: Request) -> str | None:
    """The session cookie's value (the API token), if it looks like one."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value or len(value) > _MAX_TOKEN or not value.isascii():
        return None
    return value


def principal_of(request: Request) -> Principal | None:
    """Who the session is (None: no cookie, or a token that is unknown, expired or revoked)."""
    secret = session_secret(request)
    if secret is None:
        return None
    db = cast(Database, getattr(request.app.state, DB_STATE_KEY))
    try:
        return authenticate(db, secret)
    except Unauthenticated:
        return None


def csrf_token(secret: str) -> str:
    """The session's CSRF token: HMAC-SHA256(key=the session's token, label), base64url."""
    mac = crypto_hmac.HMAC(secret.encode("ascii"), hashes.SHA256())
    mac.update(_CSRF_LABEL)
    return base64.urlsafe_b64encode(mac.finalize()).decode("ascii").rstrip("=")


def check_token(expected: str | None, submitted: object) -> bool:
    """Constant-time equality of two tokens; anything missing or not text is False."""
    if not expected or not isinstance(submitted, str) or len(submitted) > _MAX_TOKEN:
        return False
    return hmac.compare_digest(expected.encode("ascii"), submitted.encode("ascii", "replace"))


def set_session(request: Request, response: Response, secret: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)


def clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def set_login_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        max_age=_LOGIN_TTL_S,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )

"""HTTP plumbing of the device's fleet client: one keep-alive connection, JSON in and out.

Scope: :class:`RetryPolicy` (bounded exponential backoff with full jitter), :class:`JsonChannel`
(one ``http.client`` connection per session over plain TCP, HTTPS or mutual TLS with the key in
the SE; JSON bodies; responses mapped to :mod:`iotid.device.errors`; retries for idempotent calls
only, never after a 4xx or a revocation), :func:`plain_connector` (``http://`` / ``https://``
URLs of the operator API) and :func:`mtls_connector` (the device gateway, via
:func:`iotid.host.tls.connect`).

Mapping: 2xx -> the JSON body (or bytes, or streamed to a file); 4xx -> :class:`FleetRefused`
(429 -> :class:`FleetUnavailable`); 5xx, I/O failures and timeouts -> :class:`FleetUnavailable`;
the error codes ``device.revoked`` and ``batch.revoked`` (answered by the gateway over the
server-authenticated channel) -> :class:`DeviceRevoked`, after which the channel refuses every
further call without touching the network. A connection cut during or right after the handshake
(in TLS 1.3 the server judges the client certificate after the client's handshake has ended) is
never taken as a revocation: a crashing or restarting fleet cuts connections too; it is
:class:`FleetUnavailable` (unsent, so retried). An SE that fails during the handshake surfaces
as its own ``TransportError``. A gateway certificate that does not validate ->
:class:`GatewayUntrusted`.

Not in scope: the endpoints and their meaning (:mod:`iotid.device.fleetclient`,
:mod:`iotid.device.gateway`), TLS itself (:mod:`iotid.host.tls`), HTTP/2, proxies, redirects.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from cryptography import x509

from iotid.device.errors import (
    DeviceRevoked,
    FleetError,
    FleetRefused,
    FleetUnavailable,
    GatewayUntrusted,
)
from iotid.host.tls import (
    DigestSigner,
    TlsError,
    TlsHandshakeError,
    TlsVerificationError,
    connect,
    enable_cryptography_backend,
)
from iotid.transport.base import TransportError

__all__ = [
    "Connector",
    "JsonChannel",
    "RetryPolicy",
    "mtls_connector",
    "parse_address",
    "plain_connector",
]

log = logging.getLogger(__name__)

#: Opens and connects a fresh ``HTTPConnection`` (its ``sock`` set). Raises what it raises.
Connector = Callable[[], http.client.HTTPConnection]

_CHUNK = 64 * 1024
#: Error codes that mean the device itself is revoked (final).
REVOKED_CODES = frozenset({"device.revoked", "batch.revoked"})


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``attempts`` tries; before try ``n + 1`` wait a uniform random time in
    ``[0, min(cap, base * 2**n)]`` (full jitter); a ``Retry-After`` is honoured up to ``cap``."""

    attempts: int = 4
    base: float = 0.2
    cap: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base < 0 or self.cap < 0:
            raise ValueError("attempts >= 1, base >= 0, cap >= 0")

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(attempts=1)

    def delays(self, rng: random.Random) -> Iterator[float]:
        """The waits between tries (``attempts - 1`` of them), each at most ``cap``."""
        for n in range(self.attempts - 1):
            yield rng.uniform(0.0, min(self.cap, self.base * (2**n)))


def parse_address(text: str, default_port: int = 8443) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host`` or ``https://host:port`` -> (host, port)."""
    parts = urlsplit(text if "//" in text else f"//{text}")
    if not parts.hostname:
        raise ValueError(f"not a host:port address: {text!r}")
    try:
        port = parts.port or default_port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    return parts.hostname, port


def plain_connector(
    url: str, *, ca_pem: bytes | None = None, timeout: float = 10.0
) -> tuple[Connector, str]:
    """A connector for an ``http://`` or ``https://`` base URL and the URL's path prefix.

    HTTPS validates the server against ``ca_pem`` when given, else the system's trust store.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the fleet URL must be http://HOST[:PORT] or https://...: {url!r}")
    host, port = parts.hostname, parts.port
    prefix = parts.path.rstrip("/")
    if parts.scheme == "https":
        context = ssl.create_default_context(
            cadata=ca_pem.decode("ascii") if ca_pem is not None else None
        )

        def open_https() -> http.client.HTTPConnection:
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
            conn.connect()
            return conn

        return open_https, prefix

    def open_http() -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.connect()
        return conn

    return open_http, prefix


def mtls_connector(
    host: str,
    port: int,
    credential: Callable[[], tuple[DigestSigner, list[x509.Certificate]]],
    ca: list[x509.Certificate],
    *,
    server_name: str | None = None,
    timeout: float = 10.0,
) -> Connector:
    """A connector for the gateway: mutual TLS with the SE's key (``credential()`` gives the
    signer and the chain, leaf first, at each connection: after a rotation it is the new one).

    Switches tlslite's AES-GCM and X25519 to ``cryptography`` (process-wide, self-tested, see
    :mod:`iotid.host.tls_backend`): tlslite's pure-Python AES otherwise dominates the cost of a
    device's session (firmware downloads above all)."""
    enable_cryptography_backend()

    def open_mtls() -> http.client.HTTPConnection:
        signer, chain = credential()
        client = connect(host, port, signer, chain, ca, server_name=server_name, timeout=timeout)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = client  # http.client only needs sendall / makefile / close
        return conn

    return open_mtls


class JsonChannel:
    """One keep-alive HTTP/1.1 connection (re-opened when needed), JSON in and out.

    ``mtls``: the connector does client-certificate TLS, so a connection cut on the first
    exchange is the server's verdict on the certificate. ``sleep`` and ``rng`` are injectable
    for tests. Not thread-safe: one per session.
    """

    def __init__(
        self,
        connector: Connector,
        *,
        prefix: str = "",
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        name: str = "fleet",
        mtls: bool = False,
    ) -> None:
        self._connector = connector
        self._prefix = prefix
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._name = name
        self._conn: http.client.HTTPConnection | None = None
        self._fresh = False
        self._mtls = mtls
        self.revoked = False

    def __repr__(self) -> str:
        return f"JsonChannel({self._name}, open={self._conn is not None})"

    @property
    def connected(self) -> bool:
        """A connection is open (kept alive between calls)."""
        return self._conn is not None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> JsonChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------------
    def get(self, path: str, *, idempotent: bool = True) -> Any:
        return self.request("GET", path, idempotent=idempotent)

    def post(self, path: str, body: Any = None, *, idempotent: bool = False) -> Any:
        return self.request("POST", path, {} if body is None else body, idempotent=idempotent)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        idempotent: bool,
        raw: bool = False,
        stream_to: BinaryIO | None = None,
    ) -> Any:
        """One call. JSON body in; the JSON answer (``raw``: bytes; ``stream_to``: the body is
        written there and the byte count returned). :class:`FleetUnavailable` is retried when
        ``idempotent``, or whatever the call when the request provably never reached the
        application (no connection, or a handshake the gateway refused: a first refusal may be
        a glitch, a second one in a row is :class:`DeviceRevoked`). A streamed download is not
        retried once bytes were written."""
        delays = self.retry.delays(self._rng)
        while True:
            try:
                result = self._once(method, path, body, raw, stream_to)
            except FleetUnavailable as exc:
                delay = next(delays, None)
                unsent = getattr(exc, "unsent", False)
                if delay is None or not (idempotent or unsent) or getattr(exc, "streamed", False):
                    raise
                delay = max(delay, min(getattr(exc, "retry_after", 0.0), self.retry.cap))
                log.info("%s %s %s unavailable (%s); retrying", self._name, method, path, exc)
                self._sleep(delay)
            else:
                return result

    # -- one attempt -----------------------------------------------------------------------------
    def _refused(self, what: str) -> FleetError:
        """The gateway cut the connection during or right after the handshake (an alert on
        our certificate, or a restart). Never a revocation (the gateway says that in words,
        ``device.revoked``); the request never reached the application, so it may be retried."""
        self.close()
        return _unsent(f"{self._name} cut the connection at the handshake: {what}")

    def _ensure(self) -> http.client.HTTPConnection:
        if self.revoked:
            raise DeviceRevoked(f"{self._name}: this device was refused as revoked")
        if self._conn is not None and self._conn.sock is not None:
            return self._conn
        self.close()
        try:
            conn = self._connector()
        except TlsVerificationError as exc:
            raise GatewayUntrusted(f"{self._name}: {exc}") from None
        except TlsHandshakeError as exc:
            card_error = _card_error(exc)
            if card_error is not None:
                # The SE failed during the handshake (card pulled, bus down): the card's
                # error, not the gateway's verdict on us.
                raise card_error from None
            if _unreachable(exc):
                raise _unsent(f"{self._name}: {exc}") from None
            raise self._refused(str(exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _unsent(f"{self._name}: cannot connect: {exc!r}") from None
        self._conn, self._fresh = conn, True
        return conn

    def _once(
        self, method: str, path: str, body: Any, raw: bool, stream_to: BinaryIO | None
    ) -> Any:
        conn = self._ensure()
        fresh, self._fresh = self._fresh, False
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
            resp = conn.getresponse()
        except (TlsError, ConnectionResetError, http.client.RemoteDisconnected) as exc:
            if fresh and self._mtls:  # TLS 1.3: the verdict on our certificate arrives here
                raise self._refused(repr(exc)) from None
            self.close()
            raise FleetUnavailable(f"{self._name}: {method} {path}: {exc!r}") from None
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise FleetUnavailable(f"{self._name}: {method} {path}: {exc!r}") from None
        try:
            return self._answer(resp, method, path, raw, stream_to)
        except (OSError, TlsError, http.client.HTTPException) as exc:
            self.close()
            err = FleetUnavailable(f"{self._name}: reading the answer failed: {exc!r}")
            err.streamed = stream_to is not None  # type: ignore[attr-defined]
            raise err from None

    def _answer(
        self,
        resp: http.client.HTTPResponse,
        method: str,
        path: str,
        raw: bool,
        stream_to: BinaryIO | None,
    ) -> Any:
        status = resp.status
        if 200 <= status < 300:
            if stream_to is not None:
                total = 0
                while chunk := resp.read(_CHUNK):
                    stream_to.write(chunk)
                    total += len(chunk)
                return total
            payload = resp.read()
            if raw:
                return payload
            if not payload:
                return {}
            try:
                return json.loads(payload)
            except ValueError:
                raise FleetUnavailable(
                    f"{self._name}: {method} {path}: answer is not JSON", status
                ) from None
        payload = resp.read()  # drained: the connection stays usable
        code, message, reason = _error_fields(payload, status)
        if status >= 500 or status == 429:
            err = FleetUnavailable(f"{self._name}: {status} {code}: {message}", status)
            err.retry_after = _retry_after(resp.getheader("Retry-After"))  # type: ignore[attr-defined]
            raise err
        if code in REVOKED_CODES:
            self.revoked = True
            self.close()
            raise DeviceRevoked(f"{self._name}: {code}: {message}")
        raise FleetRefused(status, code, message, reason)


def _unsent(message: str) -> FleetUnavailable:
    err = FleetUnavailable(message)
    err.unsent = True  # type: ignore[attr-defined]
    return err


def _card_error(exc: BaseException) -> TransportError | None:
    """The SE's transport error behind a failed handshake, if that is what failed."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, TransportError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _unreachable(exc: TlsHandshakeError) -> bool:
    """The TCP connection itself failed (``iotid.host.tls.connect`` says "cannot reach")."""
    cause = exc.__cause__
    return str(exc).startswith("cannot reach") or isinstance(
        cause, ConnectionRefusedError | TimeoutError | socket.gaierror
    )


def _error_fields(payload: bytes, status: int) -> tuple[str, str, str | None]:
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"http.{status}", payload[:200].decode("utf-8", "replace") or "no detail", None
    code = body.get("error")
    message = body.get("message")
    reason = body.get("reason")
    return (
        code if isinstance(code, str) else f"http.{status}",
        message if isinstance(message, str) else "no detail",
        reason if isinstance(reason, str) else None,
    )


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0

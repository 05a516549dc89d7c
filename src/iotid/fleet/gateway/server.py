"""The device gateway: mutual TLS (stdlib ``ssl``) + HTTP/1.1 keep-alive (``h11``) on asyncio.

Scope: :class:`GatewayServer`.

- TLS: :func:`server_context`: TLS 1.2 and 1.3, the gateway certificate and key of
  :class:`FleetKeys`, a client certificate REQUIRED and verified by OpenSSL against the fleet
  issuing CA only (``VERIFY_X509_PARTIAL_CHAIN``: the issuing CA is the trust anchor, so a leaf
  from the issuance root's other branches, e.g. a batch CA's attestation certificate, never
  verifies). After the handshake the leaf is checked again with ``cryptography`` (directly
  issued by the issuing CA) and must name exactly one device (SAN URI,
  ``uid_from_certificate``). A connection that fails any of this is closed without a response.
- Revocation: ``is_revoked(uid, serial)`` is asked before every request. A revoked device (or a
  revoked certificate of a device) gets 403 ``device.revoked`` (``certificate.revoked``) with
  ``Connection: close``: an answer over the server-authenticated channel, so the device never
  has to guess its revocation from a cut connection (a crashing fleet cuts connections too). If
  the index cannot answer, the connection is cut (fail closed, but never a false "revoked").
- HTTP: one ``h11.Connection`` per TLS connection; request bodies over ``max_body`` -> 413;
  ``idle_timeout`` between and within requests; handlers (``Routes``) are synchronous and run
  in a bounded thread pool; a ``DomainError`` becomes its status with ``{"error", "message"}``,
  any other exception 500 ``{"error": "internal"}`` (traceback logged, never sent).
- Per request (in the worker): the revocation check, on a connection's first request the
  ``on_connect`` hook (the rotation slice completes a pending rotation when a new key's
  certificate shows up), then :meth:`PresenceService.seen` (activation, ``last_seen_at``; a
  device that is not enrolled/active/rotating gets 403 ``device.not_allowed``).
- Built-in ``GET /v1/device/whoami`` (``{"uid", "state", "epoch", "certificate_not_after"}``).
- Connection registry and :meth:`GatewayServer.drop` (callable from any thread: the revocation
  follower's), which aborts every live connection of the given UIDs or certificate serials.
- :meth:`GatewayServer.run_in_thread`: the server on its own event loop thread (tests, CLI).

Not in scope: the handlers (the slices' ``gateway.py``), the revocation index and follower
(``iotid.fleet.revocation``), the request model (``routing``), logging configuration.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from iotid.fleet.errors import DomainError, Forbidden
from iotid.fleet.gateway.presence import CONNECTABLE_STATES, PresenceService
from iotid.fleet.gateway.routing import DeviceContext, GatewayRequest, GatewayResponse, Routes
from iotid.fleet.issuing import FleetKeys, serial_hex, uid_from_certificate
from iotid.fleet.models import DeviceState

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BODY",
    "GatewayServer",
    "IsRevoked",
    "RunningGateway",
    "server_context",
]

_log = logging.getLogger(__name__)

#: ``is_revoked(uid, serial)``: uid upper-case hex, serial lower-case hex (registry spelling);
#: ``serial`` None asks about the device alone.
IsRevoked = Callable[[str, str | None], bool]
OnConnect = Callable[[DeviceContext], None]

DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT = 60.0
HANDSHAKE_TIMEOUT = 10.0
_READ_CHUNK = 65536
_MAX_HEADER_BYTES = 16 * 1024
_WHOAMI = "/v1/device/whoami"


def server_context(keys: FleetKeys) -> ssl.SSLContext:
    """The gateway's TLS context: TLS 1.2/1.3, client certificate required from the issuing CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(keys.gateway_cert_path, keys.gateway_key_path)
    context.verify_mode = ssl.CERT_REQUIRED
    # The issuing CA alone is the anchor: devices send their leaf (and maybe the issuing CA).
    context.load_verify_locations(
        cadata=keys.issuing.certificate.public_bytes(Encoding.PEM).decode()
    )
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.options |= ssl.OP_NO_COMPRESSION
    return context


@dataclass(eq=False)
class _Conn:
    """One live device connection (only touched on the event loop, except ``uid``/``serial``)."""

    ctx: DeviceContext
    transport: asyncio.WriteTransport
    task: asyncio.Task[None] | None = None
    first: bool = True
    dropped: bool = False

    def abort(self) -> None:
        self.dropped = True
        self.transport.abort()
        if self.task is not None and not self.task.done():
            self.task.cancel()


class _RefusedError(Exception):
    """Close the connection without a response (revoked or unknown device)."""


class GatewayServer:
    """The device gateway listener. ``port=0`` picks a free port (see :attr:`port`)."""

    def __init__(
        self,
        keys: FleetKeys,
        routes: Routes,
        is_revoked: IsRevoked,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        on_connect: OnConnect | None = None,
        presence: PresenceService | None = None,
        max_workers: int = 16,
        max_body: int = DEFAULT_MAX_BODY,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        reuse_port: bool = False,
    ) -> None:
        self._keys = keys
        self._routes = routes
        self._is_revoked = is_revoked
        self._host = host
        self._port = port
        self._on_connect = on_connect
        self._presence = presence
        self._max_workers = max_workers
        self._max_body = max_body
        self._idle = idle_timeout
        self._reuse_port = reuse_port
        self._context = server_context(keys)
        self._issuing = keys.issuing.certificate
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._by_uid: dict[str, set[_Conn]] = {}
        self._by_serial: dict[str, set[_Conn]] = {}

    def __repr__(self) -> str:
        return f"GatewayServer({self._host}:{self._port})"

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the gateway is already started")
        self._loop = asyncio.get_running_loop()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            self._max_workers, thread_name_prefix="iotid-gateway"
        )
        self._server = await asyncio.start_server(
            self._serve,
            self._host,
            self._port,
            ssl=self._context,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            limit=_READ_CHUNK,
            reuse_port=self._reuse_port or None,  # several worker processes share the port
        )
        self._port = self._server.sockets[0].getsockname()[1]
        _log.info("device gateway listening on %s:%d", self._host, self._port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._drop_now(None, None)
        await server.wait_closed()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run_in_thread(self) -> RunningGateway:
        """Start on a new event loop in a daemon thread; returns when listening (or raises)."""
        return RunningGateway.start(self)

    # -- connection registry ---------------------------------------------------------------------
    def live_connections(self) -> int:
        with self._lock:
            return sum(len(conns) for conns in self._by_uid.values())

    def drop(self, uids: Iterable[str] = (), serials: Iterable[str] = ()) -> None:
        """Abort every live connection of ``uids`` or certificate ``serials`` (any thread)."""
        wanted_uids = {u.upper() for u in uids}
        wanted_serials = {s.lower() for s in serials}
        loop = self._loop
        if loop is None or loop.is_closed() or not (wanted_uids or wanted_serials):
            return
        # RuntimeError: the loop closed meanwhile, so nothing is connected any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._drop_now, wanted_uids, wanted_serials)

    def _drop_now(self, uids: set[str] | None, serials: set[str] | None) -> None:
        """On the loop: abort matching connections (``None`` and ``None``: all of them)."""
        with self._lock:
            victims: set[_Conn] = set()
            if uids is None and serials is None:
                for conns in self._by_uid.values():
                    victims |= conns
            else:
                for uid in uids or ():
                    victims |= self._by_uid.get(uid, set())
                for serial in serials or ():
                    victims |= self._by_serial.get(serial, set())
        for conn in victims:
            conn.abort()
        if victims and uids is not None:
            _log.info("dropped %d connection(s) on revocation", len(victims))

    def _register(self, conn: _Conn) -> None:
        with self._lock:
            self._by_uid.setdefault(conn.ctx.uid, set()).add(conn)
            self._by_serial.setdefault(conn.ctx.serial, set()).add(conn)

    def _unregister(self, conn: _Conn) -> None:
        with self._lock:
            for index, key in ((self._by_uid, conn.ctx.uid), (self._by_serial, conn.ctx.serial)):
                conns = index.get(key)
                if conns is not None:
                    conns.discard(conn)
                    if not conns:
                        del index[key]

    # -- one connection --------------------------------------------------------------------------
    def _identify(self, writer: asyncio.StreamWriter) -> DeviceContext | None:
        ssl_object = writer.get_extra_info("ssl_object")
        der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
        if not der:
            return None
        try:
            cert = x509.load_der_x509_certificate(der)
            cert.verify_directly_issued_by(self._issuing)
        except (ValueError, TypeError, InvalidSignature):
            return None
        uid = uid_from_certificate(cert)
        if uid is None:
            return None
        return DeviceContext(uid=uid, certificate=cert, serial=serial_hex(cert.serial_number))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ctx = self._identify(writer)
        if ctx is None:
            _log.info("gateway refused a connection (no device)")
            writer.transport.abort()
            return
        conn = _Conn(ctx, writer.transport, asyncio.current_task())
        self._register(conn)
        try:
            await self._http(conn, reader, writer)
        except (asyncio.CancelledError, ConnectionError, ssl.SSLError, TimeoutError, _RefusedError):
            pass
        except Exception:
            _log.exception("gateway connection of %s failed", ctx.uid)
        finally:
            self._unregister(conn)
            if conn.dropped:
                conn.transport.abort()
            else:
                await _close(writer)

    def _revocation(self, ctx: DeviceContext) -> GatewayResponse | None:
        """403 ``device.revoked`` / ``certificate.revoked`` (closing), or None when neither.
        Raises when the index cannot answer (the caller cuts the connection)."""
        if self._is_revoked(ctx.uid, None):
            code, message = "device.revoked", "this device is revoked"
        elif self._is_revoked(ctx.uid, ctx.serial):
            code, message = "certificate.revoked", "this certificate is revoked"
        else:
            return None
        _log.info("gateway refused %s: %s", ctx.uid, code)
        return GatewayResponse.of_json({"error": code, "message": message}, 403, close=True)

    async def _http(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADER_BYTES)
        loop = asyncio.get_running_loop()
        while True:
            try:
                request = await self._read_request(http, reader)
            except h11.RemoteProtocolError as exc:
                if http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    await self._send(http, writer, _error(status, "request.bad_http", "bad HTTP"))
                return
            except _BodyTooLargeError:
                await self._send(
                    http, writer, _error(413, "request.too_large", "the body is too large")
                )
                return
            if request is None:
                return
            response = await loop.run_in_executor(self._pool, self._handle, conn, request)
            if response is None:
                raise _RefusedError
            await self._send(http, writer, response)
            if http.our_state is h11.MUST_CLOSE or http.their_state is h11.MUST_CLOSE:
                return
            try:
                http.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _read_request(
        self, http: h11.Connection, reader: asyncio.StreamReader
    ) -> GatewayRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(_READ_CHUNK), self._idle)
                http.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
                length = _content_length(event)
                if length is not None and length > self._max_body:
                    raise _BodyTooLargeError
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._max_body:
                    raise _BodyTooLargeError
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None  # noqa: S101 (h11 orders its events)
                return _request(head, bytes(body))
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _send(
        self, http: h11.Connection, writer: asyncio.StreamWriter, response: GatewayResponse
    ) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
        ]
        if response.close or response.status in (400, 413, 431):
            headers.append(("connection", "close"))
        try:
            data = http.send(h11.Response(status_code=response.status, headers=headers))
            data += http.send(h11.Data(data=response.body)) if response.body else b""
            data += http.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self._idle)

    # -- in a worker thread ----------------------------------------------------------------------
    def _handle(self, conn: _Conn, request: GatewayRequest) -> GatewayResponse | None:
        """Revocation, first-request hook, presence, then the route; None closes the connection."""
        ctx = conn.ctx
        if conn.dropped:
            return None
        try:
            refusal = self._revocation(ctx)
        except Exception:
            _log.exception("revocation check failed; cutting %s", ctx.uid)
            return None  # fail closed
        if refusal is not None:
            return refusal
        try:
            if conn.first:
                conn.first = False
                if self._on_connect is not None:
                    try:
                        self._on_connect(ctx)
                    except Exception:
                        _log.exception("gateway on_connect hook failed for %s", ctx.uid)
            if self._presence is not None:
                snapshot = self._presence.seen(ctx.uid)
                if snapshot is not None and snapshot.state == DeviceState.REVOKED:
                    raise Forbidden("device.revoked", "this device is revoked")
                if snapshot is None or snapshot.state not in CONNECTABLE_STATES:
                    raise Forbidden("device.not_allowed", "this device may not use the gateway")
            if request.path == _WHOAMI and request.method == "GET":
                return self._whoami(ctx, request)
            handler, params = self._routes.resolve(request.method, request.path)
            return handler(ctx, dataclasses.replace(request, params=params))
        except DomainError as exc:
            return GatewayResponse.of_json(
                {**exc.extra, "error": exc.code, "message": exc.message}, exc.status
            )
        except Exception:
            _log.exception("gateway handler failed: %s %s", request.method, request.path)
            return GatewayResponse.of_json({"error": "internal"}, 500)

    def _whoami(self, ctx: DeviceContext, _request: GatewayRequest) -> GatewayResponse:
        if self._presence is not None:
            return GatewayResponse.of_json(self._presence.whoami(ctx))
        return GatewayResponse.of_json(
            {
                "uid": ctx.uid,
                "state": None,
                "epoch": None,
                "certificate_not_after": ctx.certificate.not_valid_after_utc.isoformat(),
            }
        )


class _BodyTooLargeError(Exception):
    pass


def _content_length(event: h11.Request) -> int | None:
    for name, value in event.headers:
        if name == b"content-length":
            return int(value)
    return None


def _request(head: h11.Request, body: bytes) -> GatewayRequest:
    target = head.target.decode("ascii", "replace")
    parts = urlsplit(target)
    headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in head.headers}
    return GatewayRequest(
        method=head.method.decode("ascii", "replace").upper(),
        path=unquote(parts.path),
        body=body,
        query=dict(parse_qsl(parts.query)),
        headers=headers,
    )


def _error(status: int, code: str, message: str) -> GatewayResponse:
    return GatewayResponse.of_json({"error": code, "message": message}, status)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 2.0)


@dataclass
class RunningGateway:
    """A :class:`GatewayServer` on its own event loop thread; :meth:`stop` ends both."""

    server: GatewayServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.port

    @classmethod
    def start(cls, server: GatewayServer, timeout: float = 30.0) -> RunningGateway:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(server.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(server.stop())
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="iotid-gateway-loop", daemon=True)
        thread.start()
        if not started.wait(timeout):
            raise TimeoutError("the gateway did not start")
        if failure:
            raise failure[0]
        return cls(server, loop, thread)

    def stop(self, timeout: float = 30.0) -> None:
        if not self.thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)

    def __enter__(self) -> RunningGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

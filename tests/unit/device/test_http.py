"""The device's HTTP plumbing against tiny scripted local servers: error mapping, keep-alive,
bounded backoff with jitter, retries for idempotent calls only, never after 4xx or revocation."""

from __future__ import annotations

import io
import json
import random
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from iotid.device.errors import DeviceRevoked, FleetRefused, FleetUnavailable
from iotid.device.http import JsonChannel, RetryPolicy, parse_address, plain_connector

Reply = tuple[int, Any]  # (status, JSON value or raw bytes)


class Script:
    """Replies served in order (the last one repeats); records requests and connections."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[str, str, Any]] = []
        self.connections: set[tuple[str, int]] = set()
        self.headers: dict[str, str] = {}

    def next(self) -> Reply:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script((200, {}))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            script.requests.append((self.command, self.path, json.loads(raw) if raw else None))
            script.connections.add(self.client_address)
            status, value = script.next()
            body = value if isinstance(value, bytes) else json.dumps(value).encode()
            self.send_response(status)
            ctype = "application/octet-stream" if isinstance(value, bytes) else "application/json"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in script.headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        do_GET = _serve  # noqa: N815
        do_POST = _serve  # noqa: N815

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def channel(url: str, sleeps: Sleeps, attempts: int = 4) -> JsonChannel:
    connector, prefix = plain_connector(url, timeout=5)
    return JsonChannel(
        connector,
        prefix=prefix,
        retry=RetryPolicy(attempts=attempts, base=0.1, cap=0.3),
        sleep=sleeps,
        rng=random.Random(7),
    )


def test_json_round_trip_on_one_keep_alive_connection(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(201, {"nonce": "AAAA"}), (200, {"ok": True})]
    with channel(url, Sleeps()) as ch:
        assert ch.post("/v1/x", {"a": 1}) == {"nonce": "AAAA"}
        assert ch.get("/v1/y") == {"ok": True}
    assert script.requests == [("POST", "/v1/x", {"a": 1}), ("GET", "/v1/y", None)]
    assert len(script.connections) == 1


def test_connected_reflects_the_keep_alive_connection(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(200, {"a": 1})]
    with channel(url, Sleeps()) as ch:
        assert not ch.connected
        ch.get("/x")
        assert ch.connected
        ch.close()
        assert not ch.connected


def test_url_path_prefix_is_kept(server: tuple[str, Script]) -> None:
    url, script = server
    with channel(url + "/base/", Sleeps()) as ch:
        ch.get("/v1/z")
    assert script.requests[0][1] == "/base/v1/z"


def test_4xx_is_fleet_refused_with_fields_and_never_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [
        (403, {"error": "enrollment.refused", "message": "no", "reason": "nonce_reused"})
    ]
    sleeps = Sleeps()
    with channel(url, sleeps) as ch, pytest.raises(FleetRefused) as info:
        ch.get("/v1/x")  # idempotent, and still not retried
    err = info.value
    assert (err.status, err.code, err.message, err.reason) == (
        403,
        "enrollment.refused",
        "no",
        "nonce_reused",
    )
    assert len(script.requests) == 1 and sleeps == []


def test_4xx_without_json_body(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(404, b"nothing here")]
    with channel(url, Sleeps()) as ch, pytest.raises(FleetRefused) as info:
        ch.get("/v1/x")
    assert info.value.code == "http.404" and info.value.reason is None


def test_5xx_retried_with_bounded_jittered_backoff_for_idempotent(
    server: tuple[str, Script],
) -> None:
    url, script = server
    script.replies = [(503, {"error": "db.unavailable", "message": "down"})]
    sleeps = Sleeps()
    with channel(url, sleeps, attempts=4) as ch, pytest.raises(FleetUnavailable) as info:
        ch.get("/v1/x")
    assert info.value.status == 503
    assert len(script.requests) == 4
    assert len(sleeps) == 3
    assert all(0 <= s <= 0.3 for s in sleeps)


def test_5xx_then_success(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(500, {"error": "x", "message": "y"}), (200, {"fine": 1})]
    with channel(url, Sleeps()) as ch:
        assert ch.post("/v1/rotation", {"n": 1}, idempotent=True) == {"fine": 1}
    assert len(script.requests) == 2


def test_5xx_not_retried_for_non_idempotent(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(503, {"error": "x", "message": "y"})]
    sleeps = Sleeps()
    with channel(url, sleeps) as ch, pytest.raises(FleetUnavailable):
        ch.post("/v1/device/telemetry", {"payload": ""})
    assert len(script.requests) == 1 and sleeps == []


def test_retry_after_honoured_up_to_the_cap(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(429, {"error": "rate", "message": "slow down"}), (200, {})]
    script.headers = {"Retry-After": "120"}
    sleeps = Sleeps()
    with channel(url, sleeps) as ch:
        ch.get("/v1/x")
    assert sleeps == [0.3]


def test_revoked_code_stops_everything(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(403, {"error": "device.revoked", "message": "revoked"}), (200, {})]
    sleeps = Sleeps()
    with channel(url, sleeps) as ch:
        with pytest.raises(DeviceRevoked):
            ch.get("/v1/device/whoami")
        with pytest.raises(DeviceRevoked):
            ch.get("/v1/device/whoami")  # no network: no retry storm
        assert ch.revoked
    assert len(script.requests) == 1 and sleeps == []


def test_connection_refused_is_unavailable_and_bounded() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once we leave: nothing listens
    sleeps = Sleeps()
    with channel(f"http://127.0.0.1:{port}", sleeps, attempts=3) as ch:
        with pytest.raises(FleetUnavailable) as info:
            ch.get("/v1/x")
        with pytest.raises(FleetUnavailable):
            ch.post("/v1/y", {})
    assert info.value.status is None
    # Three tries each: nothing reached the server, so even the POST is safely retried.
    assert len(sleeps) == 4


def test_non_json_success_is_unavailable(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(200, b"<html>")]
    with channel(url, Sleeps(), attempts=1) as ch, pytest.raises(FleetUnavailable):
        ch.get("/v1/x")


def test_raw_and_streamed_bodies(server: tuple[str, Script]) -> None:
    url, script = server
    blob = bytes(range(256)) * 1000
    script.replies = [(200, blob)]
    with channel(url, Sleeps()) as ch:
        assert ch.request("GET", "/fw/sig", idempotent=True, raw=True) == blob
        sink = io.BytesIO()
        assert ch.request("GET", "/fw", idempotent=True, stream_to=sink) == len(blob)
    assert sink.getvalue() == blob


def test_retry_policy_delays_are_bounded_and_counted() -> None:
    policy = RetryPolicy(attempts=6, base=0.5, cap=2.0)
    rng = random.Random(1)
    for _ in range(50):
        delays = list(policy.delays(rng))
        assert len(delays) == 5
        assert all(0 <= d <= min(2.0, 0.5 * 2**n) for n, d in enumerate(delays))
    assert list(RetryPolicy.none().delays(rng)) == []
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("gw.example:9000", ("gw.example", 9000)),
        ("gw.example", ("gw.example", 8443)),
        ("https://gw.example:1234", ("gw.example", 1234)),
        ("[::1]:7000", ("::1", 7000)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("bad", ["", ":80", "host:port"])
def test_parse_address_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_address(bad)


def test_bad_fleet_url() -> None:
    with pytest.raises(ValueError):
        plain_connector("ftp://x")


def test_card_failing_during_the_handshake_is_not_a_refusal() -> None:
    """A pulled SE during the mTLS handshake surfaces as the card's TransportError, never as the
    gateway refusing us: repeated, it must not mark the device revoked."""
    from iotid.host.tls_keys import TlsHandshakeError  # noqa: PLC0415
    from iotid.transport.base import TransportError  # noqa: PLC0415

    def connector() -> Any:
        try:
            raise TransportError("reader removed")
        except TransportError as cause:
            raise TlsHandshakeError("handshake failed: the signer raised") from cause

    channel = JsonChannel(connector, name="gateway", mtls=True, retry=RetryPolicy(attempts=1))
    for _ in range(3):
        with pytest.raises(TransportError, match="reader removed"):
            channel.get("/v1/device/whoami")
    assert not channel.revoked

"""The gateway channel over mutual TLS (tlslite client, stdlib ``ssl`` server): JSON on one
keep-alive connection; a refused client certificate is FleetUnavailable, never DeviceRevoked; a
gateway certificate from the wrong CA is GatewayUntrusted; an unreachable gateway is
FleetUnavailable."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from iotid.device.errors import FleetUnavailable, GatewayUntrusted
from iotid.device.http import JsonChannel, RetryPolicy, mtls_connector
from iotid.host.tls import DigestSigner
from support.tls import TlsPki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsPki:
    return TlsPki.create(tmp_path_factory.mktemp("device-mtls"))


@contextmanager
def https_server(pki: TlsPki, stem: str, client_ca: str) -> Iterator[tuple[int, list[str]]]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            peer = self.connection.getpeercert()
            seen.append(str(peer.get("subject") if peer else None))
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.dir / f"{stem}.pem", pki.dir / f"{stem}.key")
    ctx.load_verify_locations(cadata=client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def gateway_channel(
    pki: TlsPki, port: int, signer: DigestSigner, chain: list[x509.Certificate]
) -> JsonChannel:
    connector = mtls_connector("127.0.0.1", port, lambda: (signer, chain), [pki.ca.cert], timeout=5)
    return JsonChannel(
        connector, retry=RetryPolicy(attempts=3, base=0, cap=0), name="gateway", mtls=True
    )


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


@pytest.mark.parametrize("alg", ["p256", "rsa2048"])
def test_json_over_mtls_keep_alive(pki: TlsPki, alg: str) -> None:
    signer, chain = pki.signer_for(alg, "card")
    with (
        https_server(pki, "server", _pem(pki.ca.cert)) as (port, seen),
        gateway_channel(pki, port, signer, chain) as ch,
    ):
        assert ch.get("/v1/device/whoami") == {"path": "/v1/device/whoami"}
        assert ch.get("/v1/device/commands") == {"path": "/v1/device/commands"}
    assert len(seen) == 2 and f"device-{alg}" in seen[0]


def test_refused_client_certificate_is_unavailable_never_revoked(pki: TlsPki) -> None:
    """A cut handshake is never taken as a revocation (a restarting fleet cuts connections too;
    a revoked device is told so in words): it is retried within the policy, then unavailable."""
    signer, chain = pki.signer_for("p256", "software")
    connects = []

    def counted() -> tuple[DigestSigner, list[x509.Certificate]]:
        connects.append(1)
        return signer, chain

    # The server only accepts clients of the rogue CA: it refuses our certificate.
    with https_server(pki, "server", _pem(pki.rogue.cert)) as (port, _seen):
        connector = mtls_connector("127.0.0.1", port, counted, [pki.ca.cert], timeout=5)
        ch = JsonChannel(connector, retry=RetryPolicy(attempts=3, base=0, cap=0), mtls=True)
        with pytest.raises(FleetUnavailable, match="cut the connection"):
            ch.post("/v1/device/telemetry", {})
        assert not ch.revoked
        ch.close()
    assert len(connects) == 3  # the request never reached the application: retried, bounded


def test_gateway_from_another_ca_is_untrusted(pki: TlsPki) -> None:
    signer, chain = pki.signer_for("p256", "software")
    with (
        https_server(pki, "rogue-server", _pem(pki.ca.cert)) as (port, _seen),
        gateway_channel(pki, port, signer, chain) as ch,
        pytest.raises(GatewayUntrusted),
    ):
        ch.get("/v1/device/whoami")


def test_unreachable_gateway_is_unavailable(pki: TlsPki, tmp_path: Path) -> None:
    signer, chain = pki.signer_for("p256", "software")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with gateway_channel(pki, port, signer, chain) as ch, pytest.raises(FleetUnavailable):
        ch.get("/v1/device/whoami")
    assert not ch.revoked

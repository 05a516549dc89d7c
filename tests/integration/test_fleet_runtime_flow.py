"""The whole fleet flow through :class:`FleetRuntime`, the composition ``iotid fleet serve`` runs,
and revocation across two fleet processes with a live device connection.

- ``test_full_flow_through_the_runtime`` (SQLite and PostgreSQL): ``FleetRuntime(config)
  .run_in_thread()`` over a fleet directory made by the factory (``support.fleetworld``); the
  operator imports the signed manifest over the API with a real token; a real card enrolls
  (``FleetClient``), sends telemetry over mutual TLS (read back over the API and its signature
  checked against the certificate's key), receives an operator command, rotates its key (the
  API shows epoch 2, OCSP says the old certificate is revoked and the new one good), and is
  revoked over the API: its live gateway session ends in :class:`DeviceRevoked`, a fresh boot
  is refused by the gateway and re-enrollment by the API; the audit chain verifies over the API.
- ``test_revocation_in_one_process_drops_a_live_connection_in_another`` (PostgreSQL): process A
  is an in-test FleetRuntime, process B an ``iotid fleet serve`` subprocess on the same
  database; the device holds a keep-alive mutual-TLS connection to B's gateway, the revocation
  is posted to A's API, and B's gateway closes the live connection (LISTEN/NOTIFY) and refuses
  a new one. The latency is printed (``-s``); only a generous 5 s bound is asserted.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from sqlalchemy.engine import URL

from iotid.device import (
    DeviceRevoked,
    FleetClient,
    FleetRefused,
    FleetUnavailable,
    GatewaySession,
    RetryPolicy,
)
from iotid.device.http import mtls_connector
from iotid.fleet.auth import Role, create_token
from iotid.fleet.config import FleetConfig
from iotid.fleet.runtime import FleetRuntime, RunningFleet
from iotid.host.tls import TlsClient, TlsError
from support.fleetproc import FleetProcess, start_fleet
from support.fleetworld import FleetWorld, WorldCard, build_world
from unit.fleet.conftest import (  # noqa: F401 - the fleet fixtures
    fleet_db_url,
    postgres_url,
)

pytestmark = pytest.mark.slow

BATCH = "flow"
WAIT_S = 5.0
FAST_RETRY = RetryPolicy(attempts=4, base=0.01, cap=0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(tmp_path_factory.mktemp("runtime-flow"), {BATCH: ("p256", 1)})


def _url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture
def fleet(world: FleetWorld, fleet_db_url: URL) -> Iterator[RunningFleet]:  # noqa: F811
    config = FleetConfig(world.fleet_dir, _url(fleet_db_url), api_port=0, gateway_port=0)
    with FleetRuntime(config).run_in_thread() as running:
        yield running


def _operator(running: RunningFleet) -> httpx.Client:
    token = create_token(running.runtime.db, Role.OPERATOR, dt.timedelta(hours=1))
    return httpx.Client(
        base_url=running.api_url,
        headers={"Authorization": f"Bearer {token.secret}"},
        timeout=30,
    )


def _import(api: httpx.Client, api_url: str, world: FleetWorld) -> None:
    batch = world.batches[BATCH]
    body = {
        "manifest": base64.b64encode(batch.manifest_bytes).decode(),
        "signature": base64.b64encode(batch.signature).decode(),
    }
    assert httpx.post(f"{api_url}/v1/batches", json=body).status_code == 401  # no token
    answer = api.post("/v1/batches", json=body)
    assert answer.status_code == 201, answer.text
    assert (answer.json()["batch"], answer.json()["devices"]) == (BATCH, 1)


def _device(api: httpx.Client, uid: str) -> dict[str, object]:
    answer = api.get(f"/v1/devices/{uid}")
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def _client(card: WorldCard, api_url: str, gateway: str, state: Path) -> FleetClient:
    return FleetClient(card.se(), api_url, gateway=gateway, state_dir=state, retry=FAST_RETRY)


def _ocsp_status(
    api: httpx.Client, world: FleetWorld, cert: x509.Certificate
) -> ocsp.OCSPCertStatus:
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(cert, world.keys.issuing.certificate, hashes.SHA256())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    answer = api.post(
        "/ocsp", content=request, headers={"Content-Type": "application/ocsp-request"}
    )
    assert answer.status_code == 200
    response = ocsp.load_der_ocsp_response(answer.content)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert response.serial_number == cert.serial_number
    return response.certificate_status


def _until_revoked(gw: GatewaySession) -> None:
    """Call the gateway until it says revoked (the follower applies the event within ~1 s)."""
    deadline = time.monotonic() + WAIT_S
    with pytest.raises(DeviceRevoked):
        while time.monotonic() < deadline:
            # FleetUnavailable: the live connection was cut; the next call reconnects, refused
            with contextlib.suppress(FleetUnavailable):
                gw.whoami()
            time.sleep(0.05)


def test_full_flow_through_the_runtime(
    world: FleetWorld, fleet: RunningFleet, tmp_path: Path
) -> None:
    card = world.batches[BATCH].cards[0].copy(tmp_path / "card")
    uid = card.uid_hex
    gateway = f"127.0.0.1:{fleet.runtime.gateway_port}"
    with _operator(fleet) as api:
        assert api.get("/readyz").json() == {"status": "ready"}
        _import(api, fleet.api_url, world)
        assert _device(api, uid)["state"] == "manufactured"

        # enrollment over the API
        client = _client(card, fleet.api_url, gateway, tmp_path / "state")
        info = client.enroll()
        assert (info.uid, info.epoch) == (uid, 1)
        assert (_device(api, uid)["state"], _device(api, uid)["key_epoch"]) == ("enrolled", 1)
        assert _ocsp_status(api, world, info.certificate) == ocsp.OCSPCertStatus.GOOD

        with client.gateway() as gw:
            # telemetry over mutual TLS, read back over the API, its signature the card's
            me = gw.whoami()
            assert (me.uid, me.state, me.epoch) == (uid, "active", 1)
            payload = b'{"t": 21.5}'
            reading = gw.send_telemetry(payload)
            items = api.get(f"/v1/devices/{uid}/telemetry").json()["items"]
            assert [(str(i["id"]), i["key_epoch"]) for i in items] == [(reading, 1)]
            assert base64.b64decode(items[0]["payload"]) == payload
            key = info.certificate.public_key()
            assert isinstance(key, ec.EllipticCurvePublicKey)
            key.verify(base64.b64decode(items[0]["signature"]), payload, ec.ECDSA(hashes.SHA256()))
            # an operator command, decrypted on the card
            sent = api.post(
                f"/v1/devices/{uid}/commands",
                json={"plaintext": base64.b64encode(b"reboot").decode()},
            )
            assert sent.status_code == 201, sent.text
            assert [c.plaintext for c in gw.commands()] == [b"reboot"]

            # rotation over the gateway
            rotated = gw.rotate()
            assert rotated.epoch == 2
            assert gw.whoami().epoch == 2
            device = _device(api, uid)
            assert (device["state"], device["key_epoch"]) == ("active", 2)
            new_spki = rotated.certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            assert device["identity_spki"] == base64.b64encode(new_spki).decode()
            assert _ocsp_status(api, world, info.certificate) == ocsp.OCSPCertStatus.REVOKED
            assert _ocsp_status(api, world, rotated.certificate) == ocsp.OCSPCertStatus.GOOD
            after = gw.send_telemetry(b"after rotation")
            newest = api.get(f"/v1/devices/{uid}/telemetry").json()["items"][0]
            assert (str(newest["id"]), newest["key_epoch"]) == (after, 2)

            # revocation over the API: the live session is cut and refused
            revoked = api.post(f"/v1/devices/{uid}/revoke", json={"reason": "key_compromise"})
            assert revoked.status_code == 200, revoked.text
            assert revoked.json()["created"] is True
            _until_revoked(gw)
        assert client.state.revoked
        assert _device(api, uid)["state"] == "revoked"
        assert _ocsp_status(api, world, rotated.certificate) == ocsp.OCSPCertStatus.REVOKED

        # a reboot remembers it; a device that forgot it is refused by the gateway and the API
        with pytest.raises(DeviceRevoked):
            _client(card, fleet.api_url, gateway, tmp_path / "state").gateway()
        forgetful = _client(card, fleet.api_url, gateway, tmp_path / "state")
        forgetful.state.update(revoked=None)
        with forgetful.gateway() as gw, pytest.raises(DeviceRevoked):
            gw.whoami()
        with pytest.raises(FleetRefused) as refused:
            _client(card, fleet.api_url, gateway, tmp_path / "fresh-state").enroll()
        assert refused.value.reason == "device_revoked"

        verified = api.get("/v1/audit/verify").json()
        assert verified["ok"] is True and verified["head_seq"] > 0


# -- two processes ---------------------------------------------------------------------------------
class PeerCloseWatch:
    """A thread blocked in ``recv`` on an idle connection (a ``TlsClient``): it returns when the
    peer closes it (close_notify: ``b""``; a cut: ``TlsError`` / ``OSError``), and records when.
    (``select`` on ``TlsClient.fileno()`` is not usable: see the module's report note.)"""

    def __init__(self, sock: TlsClient, timeout: float) -> None:
        self._sock = sock
        sock.settimeout(timeout)
        self.closed_at: float | None = None
        self.outcome = ""
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        try:
            data = self._sock.recv(4096)
        except TimeoutError:
            self.outcome = "still open"
            return
        except (TlsError, OSError) as exc:
            self.outcome = f"cut ({type(exc).__name__})"
        else:
            self.outcome = "close_notify" if data == b"" else f"unexpected bytes {data[:40]!r}"
        self.closed_at = time.monotonic()

    def open_after(self, seconds: float) -> bool:
        self._thread.join(seconds)
        return self._thread.is_alive()

    def wait(self, seconds: float) -> float | None:
        """When the peer closed the connection (monotonic), None if not within ``seconds``."""
        self._thread.join(seconds)
        return self.closed_at


@pytest.mark.parametrize("fleet_db_url", ["postgresql"], indirect=True)
def test_revocation_in_one_process_drops_a_live_connection_in_another(
    world: FleetWorld,
    fleet: RunningFleet,
    fleet_db_url: URL,  # noqa: F811
    tmp_path: Path,
) -> None:
    card = world.batches[BATCH].cards[0].copy(tmp_path / "card")
    uid = card.uid_hex
    other: FleetProcess = start_fleet(world.fleet_dir, _url(fleet_db_url), tmp_path / "b.log")
    try:
        with _operator(fleet) as api_a:
            _import(api_a, fleet.api_url, world)
            client = _client(card, other.api_url, other.gateway_address, tmp_path / "state")
            client.enroll()  # through B's API; the registry is the same
            assert _device(api_a, uid)["state"] == "enrolled"

            # a keep-alive mutual-TLS connection to B's gateway, made by the device's stack
            ca = client.state.gateway_ca()
            assert ca is not None
            connect = mtls_connector(
                "127.0.0.1",
                other.gateway_port,
                lambda: (client.se.mtls, client.se.mtls.chain()),
                ca,
            )
            conn = connect()
            for _ in range(2):  # two requests on the one connection: it is live and kept
                conn.request("GET", "/v1/device/whoami")
                answer = conn.getresponse()
                assert answer.status == 200 and b'"uid"' in answer.read()
            sock = conn.sock
            assert isinstance(sock, TlsClient)
            watch = PeerCloseWatch(sock, timeout=WAIT_S + 5)
            assert watch.open_after(0.3), f"the connection closed by itself: {watch.outcome}"

            sent = time.monotonic()
            revoked = api_a.post(f"/v1/devices/{uid}/revoke", json={"reason": "key_compromise"})
            answered = time.monotonic()
            assert revoked.status_code == 200, revoked.text
            closed = watch.wait(WAIT_S)
            assert closed is not None, "B's gateway kept the revoked device's connection open"
            print(
                f"\nrevocation posted to process A -> the live connection to process B's gateway "
                f"closed ({watch.outcome}) {(closed - sent) * 1000:.0f} ms after the call was "
                f"sent, {(closed - answered) * 1000:.0f} ms after A answered"
            )
            conn.close()

            # a new connection to B is refused (the device's own client: DeviceRevoked)
            with client.gateway() as gw, pytest.raises(DeviceRevoked):
                gw.whoami()
            assert client.state.revoked
    finally:
        other.stop()

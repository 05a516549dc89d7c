"""The enrollment endpoints of the operator API (no token) with a real card, on SQLite and
PostgreSQL: POST /v1/enrollment/nonce, POST /v1/enrollment, the refusal body with its reason,
request validation, and the OpenAPI document naming both routes.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

from iotid.fleet.app import create_app
from iotid.fleet.db import Database
from iotid.fleet.devices.service import DeviceService
from iotid.fleet.issuing import device_uri
from support.fleetworld import FleetWorld, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(tmp_path_factory.mktemp("enroll-api"), {"p256-a": ("p256", 2)})


@pytest.fixture
def client(fleet_db: Database, world: FleetWorld) -> Iterator[TestClient]:
    batch = world.batches["p256-a"]
    DeviceService(fleet_db, world.root).import_manifest(
        batch.manifest_bytes, batch.signature, actor="test"
    )
    root_pem = world.root.public_bytes(serialization.Encoding.PEM)
    app = create_app(fleet_db.url, root_pem, keys=world.keys)
    with TestClient(app) as test_client:
        yield test_client


def _nonce(client: TestClient) -> bytes:
    response = client.post("/v1/enrollment/nonce")
    assert response.status_code == 201, response.text
    body = response.json()
    expires_at = dt.datetime.fromisoformat(body["expires_at"])
    assert dt.timedelta(0) < expires_at - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=300)
    return base64.b64decode(body["nonce"], validate=True)


def test_enroll_over_http(client: TestClient, world: FleetWorld) -> None:
    card = world.batches["p256-a"].cards[0]
    quote = card.se().attestation.attest(_nonce(client))
    response = client.post("/v1/enrollment", json={"quote": base64.b64encode(quote).decode()})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "uid",
        "epoch",
        "certificate",
        "chain",
        "serial",
        "not_after",
        "gateway_ca",
    }
    assert (body["uid"], body["epoch"]) == (card.uid_hex, 1)
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    (issuing,) = x509.load_pem_x509_certificates(body["chain"].encode())
    assert issuing == world.keys.issuing.certificate
    cert.verify_directly_issued_by(issuing)
    assert format(cert.serial_number, "x") == body["serial"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [device_uri(card.uid_hex)]
    bundle = x509.load_pem_x509_certificates(body["gateway_ca"].encode())
    assert bundle == [world.keys.issuing.certificate, world.root]
    assert dt.datetime.fromisoformat(body["not_after"]) == cert.not_valid_after_utc

    again = client.post("/v1/enrollment", json={"quote": base64.b64encode(quote).decode()})
    assert again.status_code == 403
    assert again.json()["error"] == "enrollment.refused"
    assert again.json()["reason"] == "nonce_reused"
    assert "message" in again.json()


@pytest.mark.parametrize(
    ("body", "status", "error", "reason"),
    [
        (
            {"quote": base64.b64encode(b"\xd2nonsense").decode()},
            422,
            "enrollment.refused",
            "malformed",
        ),
        ({"quote": "not base64!"}, 422, "request.bad_base64", None),
        ({"quote": ""}, 422, "request.invalid", None),
        ({}, 422, "request.invalid", None),
        ({"quote": "AAAA", "extra": 1}, 422, "request.invalid", None),
    ],
)
def test_refusals_and_validation(
    client: TestClient, body: dict[str, object], status: int, error: str, reason: str | None
) -> None:
    response = client.post("/v1/enrollment", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json().get("reason") == reason


def test_unknown_nonce_and_openapi(client: TestClient, world: FleetWorld) -> None:
    card = world.batches["p256-a"].cards[1]
    quote = card.se().attestation.attest(b"\x01" * 32)  # never issued
    response = client.post("/v1/enrollment", json={"quote": base64.b64encode(quote).decode()})
    assert (response.status_code, response.json()["reason"]) == (403, "nonce_unknown")
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/enrollment", "/v1/enrollment/nonce"} <= set(paths)

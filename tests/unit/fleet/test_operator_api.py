"""The operator API over HTTP on SQLite and PostgreSQL: tokens, batch import of a real signed
manifest, device list/detail with filters and paging, error rendering. Tokens and roles on every
endpoint (enumerated from the OpenAPI document): test_operator_auth_matrix.py."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.engine import URL

from iotid.fleet.app import create_app
from iotid.fleet.auth import NewToken, Role, authenticate, create_token
from iotid.fleet.db import Database
from iotid.fleet.errors import Unauthenticated
from iotid.fleet.models.token import ApiToken

HOUR = dt.timedelta(hours=1)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _auth(token: NewToken | str) -> dict[str, str]:
    secret = token if isinstance(token, str) else token.secret
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class Api:
    client: TestClient
    db: Database
    manifests: Any
    tokens: dict[Role, NewToken]


@pytest.fixture
def api(fleet_db: Database, fleet_db_url: URL, manifests: Any) -> Iterator[Api]:
    root_pem = manifests.root.public_bytes(serialization.Encoding.PEM)
    tokens = {role: create_token(fleet_db, role, HOUR) for role in Role}
    with TestClient(create_app(fleet_db_url, root_pem)) as client:
        yield Api(client, fleet_db, manifests, tokens)


# -- tokens ---------------------------------------------------------------------------------------
def test_token_secret_is_shown_once_and_only_hashed(fleet_db: Database) -> None:
    token = create_token(fleet_db, "auditor", HOUR)
    assert token.secret not in repr(token)
    assert len(token.secret) >= 43  # 256 bits, base64url
    with fleet_db.transaction(write=False) as session:
        row = session.execute(select(ApiToken)).scalar_one()
        stored = [str(v) for v in vars(row).values()]
    assert all(token.secret not in value for value in stored)
    assert row.role is Role.AUDITOR
    principal = authenticate(fleet_db, token.secret)
    assert (principal.role, principal.actor) == (Role.AUDITOR, f"token:{token.token_id}")
    other = create_token(fleet_db, Role.ADMIN, HOUR)
    assert other.secret != token.secret


def test_authenticate_refusals(fleet_db: Database) -> None:
    token = create_token(fleet_db, Role.OPERATOR, HOUR)
    later = dt.datetime.now(dt.UTC) + 2 * HOUR
    for bearer in (None, "", "x" * 300, token.secret + "x", "é" * 10):
        with pytest.raises(Unauthenticated):
            authenticate(fleet_db, bearer)
    with pytest.raises(Unauthenticated):
        authenticate(fleet_db, token.secret, now=later)
    with fleet_db.transaction() as session:
        session.execute(update(ApiToken).values(revoked_at=dt.datetime.now(dt.UTC)))
    with pytest.raises(Unauthenticated):
        authenticate(fleet_db, token.secret)
    with pytest.raises(ValueError, match="positive"):
        create_token(fleet_db, Role.ADMIN, dt.timedelta(0))
    with pytest.raises(ValueError):
        create_token(fleet_db, "root", HOUR)


def test_revoked_token_refused(api: Api) -> None:
    token = api.tokens[Role.ADMIN]
    assert api.client.get("/v1/devices", headers=_auth(token)).status_code == 200
    with api.db.transaction() as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == token.token_id)
            .values(revoked_at=dt.datetime.now(dt.UTC))
        )
    assert api.client.get("/v1/devices", headers=_auth(token)).status_code == 401


# -- import, list, get ----------------------------------------------------------------------------
def test_import_then_list_and_get(api: Api) -> None:
    operator, auditor = _auth(api.tokens[Role.OPERATOR]), _auth(api.tokens[Role.AUDITOR])
    uids = api.manifests.uids(0x10, 3)
    data, sig = api.manifests.make("api-1", uids)
    body = {"manifest": _b64(data), "signature": _b64(sig)}

    response = api.client.post("/v1/batches", json=body, headers=operator)
    assert response.status_code == 201, response.text
    result = response.json()
    assert (result["batch"], result["devices"], result["created"]) == ("api-1", 3, True)
    again = api.client.post("/v1/batches", json=body, headers=operator)
    assert again.status_code == 200
    assert again.json()["created"] is False

    page = api.client.get("/v1/devices", headers=auditor).json()
    hexes = [u.hex().upper() for u in uids]
    assert [d["uid"] for d in page["items"]] == hexes
    assert page["next_cursor"] is None
    first = page["items"][0]
    assert (first["batch"], first["state"], first["key_epoch"]) == ("api-1", "manufactured", 0)
    assert base64.b64decode(first["identity_spki"])[:2] == b"\x30\x59"  # DER SEQUENCE, P-256

    one = api.client.get(f"/v1/devices/{hexes[1].lower()}", headers=auditor)
    assert one.status_code == 200
    assert one.json()["uid"] == hexes[1]

    paged = api.client.get("/v1/devices", params={"limit": 2}, headers=auditor).json()
    assert [d["uid"] for d in paged["items"]] == hexes[:2]
    assert paged["next_cursor"] == hexes[1]
    rest = api.client.get(
        "/v1/devices", params={"limit": 2, "cursor": paged["next_cursor"]}, headers=auditor
    ).json()
    assert [d["uid"] for d in rest["items"]] == hexes[2:]
    assert rest["next_cursor"] is None

    for params, expected in (
        ({"batch": "api-1", "state": "manufactured"}, 3),
        ({"batch": "nope"}, 0),
        ({"state": "revoked"}, 0),
        ({"uid_prefix": hexes[2][-2:].rjust(16, "0")}, 1),
    ):
        listed = api.client.get("/v1/devices", params=params, headers=auditor)
        assert listed.status_code == 200
        assert len(listed.json()["items"]) == expected, params


def test_tampered_manifest_is_422_with_reason(api: Api) -> None:
    data, sig = api.manifests.make("api-2", api.manifests.uids(0x20, 2))
    tampered = data.replace(b'"api-2"', b'"api-3"')
    assert tampered != data
    response = api.client.post(
        "/v1/batches",
        json={"manifest": _b64(tampered), "signature": _b64(sig)},
        headers=_auth(api.tokens[Role.ADMIN]),
    )
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "manifest.invalid"
    assert body["message"]
    listed = api.client.get("/v1/devices", headers=_auth(api.tokens[Role.ADMIN]))
    assert listed.json()["items"] == []  # deny by default: nothing was registered


def test_bad_requests_are_422_with_reason(api: Api) -> None:
    admin = _auth(api.tokens[Role.ADMIN])
    bad_b64 = api.client.post(
        "/v1/batches", json={"manifest": "***", "signature": "AA=="}, headers=admin
    )
    assert bad_b64.status_code == 422
    assert bad_b64.json()["error"] == "request.bad_base64"
    missing = api.client.post("/v1/batches", json={"manifest": "AA=="}, headers=admin)
    assert missing.status_code == 422
    assert missing.json()["error"] == "request.invalid"
    assert "signature" in missing.json()["message"]
    for params in ({"limit": 0}, {"state": "flying"}, {"uid_prefix": "xyz"}, {"cursor": "1"}):
        response = api.client.get("/v1/devices", params=params, headers=admin)
        assert response.status_code == 422, params
        assert response.json()["error"] == "request.invalid"
    assert api.client.get("/v1/devices/zz", headers=admin).status_code == 422


def test_unknown_uid_is_404(api: Api) -> None:
    response = api.client.get("/v1/devices/DEADBEEF", headers=_auth(api.tokens[Role.AUDITOR]))
    assert response.status_code == 404
    assert response.json() == {"error": "device.not_found", "message": "no device DEADBEEF"}


def test_framework_refusals_use_our_error_shape(api: Api) -> None:
    admin = _auth(api.tokens[Role.ADMIN])
    unknown = api.client.get("/v1/no-such-thing", headers=admin)
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "http.404", "message": "Not Found"}
    wrong_method = api.client.delete("/v1/devices", headers=admin)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "http.405" and "allow" in wrong_method.headers
    not_json = api.client.post(
        "/v1/batches", content=b"{not json", headers={**admin, "Content-Type": "application/json"}
    )
    assert not_json.status_code in (400, 422)
    assert set(not_json.json()) >= {"error", "message"}


def test_health_and_openapi(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    spec = api.client.get("/openapi.json").json()
    assert {"/v1/batches", "/v1/devices", "/v1/devices/{uid}", "/healthz"} <= set(spec["paths"])
    schemes = spec["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
